"""The R50 Mask R-CNN COCO config: state-dict keys (mmdet 3.x), one training iteration with gt
masks, one prediction, and the mask branch's pasting on hand-made detections."""
from __future__ import annotations

import logging
import math

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData

from conftest import REPO_ROOT
from rcnn_det.models.post_processing import to_original_image
from rcnn_det.registry import MODELS
from test_models.test_detectors.test_faster_rcnn import MMDET_KEYS, MMDET_NUM_KEYS, make_batch
from test_structures.test_mask import assert_binary_matches, paste_reference

MASK_RCNN_CONFIG = REPO_ROOT / 'configs/mask_rcnn/mask_rcnn_r50_fpn_1x_coco.py'

# (key, shape) pairs that mmdetection 3.x's mask-rcnn_r50_fpn_1x_coco checkpoint adds to Faster
# R-CNN's: 4 convs (weight, bias), the deconv and the 1x1 logits -> 12 tensors.
MMDET_MASK_KEYS = [(f'roi_head.mask_head.convs.{i}.conv.{p}', shape)
                   for i in range(4)
                   for p, shape in (('weight', (256, 256, 3, 3)), ('bias', (256,)))] + [
    ('roi_head.mask_head.upsample.weight', (256, 256, 2, 2)),
    ('roi_head.mask_head.upsample.bias', (256,)),
    ('roi_head.mask_head.conv_logits.weight', (80, 256, 1, 1)),
    ('roi_head.mask_head.conv_logits.bias', (80,)),
]


@pytest.fixture(scope='module')
def r50_mask_model():
    cfg = Config.fromfile(MASK_RCNN_CONFIG)
    cfg.model.backbone.init_cfg = None  # no ImageNet weights here
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    model.init_weights()
    return model


def make_mask_batch(sizes, seed=0):
    """make_batch's images and boxes, plus a filled ellipse inscribed in each box."""
    data = make_batch(sizes, seed=seed)
    for img, sample in zip(data['inputs'], data['data_samples']):
        h, w = img.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing='ij')
        masks = []
        for x1, y1, x2, y2 in sample.gt_instances.bboxes.tolist():
            cx, cy, ax, ay = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
            masks.append(((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2 <= 1)
        sample.gt_instances.masks = torch.stack(masks).to(torch.uint8)
    return data


def test_config_and_state_dict_keys_match_mmdetection(r50_mask_model):
    model = r50_mask_model
    assert type(model).__name__ == 'MaskRCNN'
    assert model.roi_head.with_mask and not model.roi_head.share_roi_extractor
    assert model.roi_head.train_recipe.mask.mask_size == 28
    assert model.roi_head.mask_roi_extractor.roi_layers[0].output_size == (14, 14)
    assert model.roi_head.test_recipe.mask_thr_binary == 0.5
    state = model.state_dict()
    for key, shape in MMDET_KEYS + MMDET_MASK_KEYS:
        assert key in state, f'missing mmdet key {key}'
        assert tuple(state[key].shape) == shape, key
    assert len(state) == MMDET_NUM_KEYS + len(MMDET_MASK_KEYS) == 348 + 12


def test_one_training_iteration_with_masks(r50_mask_model):
    model = r50_mask_model.train()
    data = model.data_preprocessor(make_mask_batch([(128, 160), (150, 96)]), True)
    assert data['inputs'].shape == (2, 3, 160, 160)
    for sample in data['data_samples']:          # pad_mask=True: masks padded like the images
        assert sample.gt_instances.masks.shape == (3, 160, 160)
    torch.manual_seed(0)
    losses = model(**data, mode='loss')
    assert set(losses) == {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'acc', 'loss_bbox',
                           'loss_mask'}
    # a random-init mask head predicts roughly 0.5: a per-pixel mean BCE near log 2 (0.69-0.82
    # over init seeds), not a sum over pixels or RoIs
    assert torch.isfinite(losses['loss_mask']).all()
    assert 0.3 < losses['loss_mask'].item() < 1.5
    total, log_vars = model.parse_losses(losses)
    assert torch.isfinite(total) and 'loss_mask' in log_vars
    model.zero_grad()
    total.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    for name in ('roi_head.mask_head.conv_logits.weight', 'roi_head.mask_head.convs.0.conv.weight',
                 'roi_head.mask_head.upsample.weight', 'roi_head.bbox_head.fc_reg.weight',
                 'neck.fpn_convs.0.conv.weight', 'backbone.layer4.0.downsample.0.weight'):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    model.zero_grad()


def test_one_prediction(r50_mask_model):
    model = r50_mask_model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(make_batch([(96, 128)]), False)
        results = model(**data, mode='predict')
    pred = results[0].pred_instances
    assert set(pred.keys()) == {'bboxes', 'scores', 'labels', 'masks'}
    # the original image is twice the network input (scale_factor 0.5)
    assert pred.masks.dtype == torch.bool and pred.masks.shape == (len(pred), 192, 256)
    assert pred.bboxes.shape == (len(pred), 4) and pred.labels.dtype == torch.long
    assert (pred.bboxes[:, 2] <= 256 + 1e-3).all() and (pred.bboxes[:, 3] <= 192 + 1e-3).all()


@pytest.fixture(scope='module')
def features_of_one_image(r50_mask_model):
    model = r50_mask_model.eval()
    data = model.data_preprocessor(make_batch([(160, 224)]), False)
    with torch.no_grad():
        return model.extract_feat(data['inputs']), data['data_samples'][0].metainfo


@pytest.mark.parametrize('rescale', [True, False])
def test_predict_mask_on_hand_made_detections(r50_mask_model, features_of_one_image, rescale):
    """Random-init scores rarely pass score_thr, so feed predict_mask detections directly."""
    model = r50_mask_model.eval()
    x, meta = features_of_one_image
    boxes = torch.tensor([[10.3, 20.7, 70.2, 90.1], [100.5, 5.2, 223.0, 60.8],
                          [150.2, 100.4, 230.0, 170.0]])   # the last one over the border
    labels = torch.tensor([3, 0, 79])
    dets = InstanceData(bboxes=boxes.clone(), scores=torch.tensor([0.9, 0.8, 0.7]),
                        labels=labels)
    with torch.no_grad():
        res = to_original_image(model.roi_head.predict_mask(x, [dets]), [meta], rescale,
                                model.roi_head.mask_paste)[0]
        rois = torch.cat([torch.zeros(3, 1), boxes], 1)           # network-input frame
        probs = model.roi_head.mask_forward(x, rois)[torch.arange(3), labels].sigmoid()
    frame = (320, 448) if rescale else (160, 224)
    scale = 2. if rescale else 1.
    assert res.masks.dtype == torch.bool and res.masks.shape == (3,) + frame
    torch.testing.assert_close(res.bboxes, boxes * scale)
    assert res.masks.flatten(1).any(1).all()
    for d, (x1, y1, x2, y2) in enumerate(res.bboxes.tolist()):
        ys, xs = res.masks[d].nonzero(as_tuple=True)
        assert xs.min() >= math.floor(x1) - 1 and xs.max() < math.ceil(x2) + 1, d
        assert ys.min() >= math.floor(y1) - 1 and ys.max() < math.ceil(y2) + 1, d
    # the full per-pixel reference, on the boxes' padded extent (zero elsewhere at 0.5)
    ref = paste_reference(probs, res.bboxes, frame, region_boxes=res.bboxes)
    assert_binary_matches(res.masks, ref, 0.5)


def test_tensor_mode_adds_the_mask_logits_of_the_first_100_proposals(r50_mask_model):
    model = r50_mask_model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(make_batch([(96, 128)]), False)
        outs = model(data['inputs'], data['data_samples'], mode='tensor')
    # rpn cls scores, rpn box deltas, roi cls scores, roi box deltas, mask logits
    assert len(outs) == 5
    num_rois = outs[2].shape[0]
    assert outs[4].shape == (min(num_rois, 100), 80, 28, 28)
