"""The R50 COCO config: one training iteration, one prediction, state-dict keys (mmdet 3.x)."""
from __future__ import annotations

import logging

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData

from rcnn_det.registry import MODELS
from rcnn_det.structures import DetDataSample
from conftest import REPO_ROOT

R50_CONFIG = REPO_ROOT / 'configs/faster_rcnn/faster_rcnn_r50_fpn_1x_coco.py'

# (key, shape) pairs of mmdetection 3.x's faster-rcnn_r50_fpn_1x_coco checkpoint.
MMDET_KEYS = [
    ('backbone.conv1.weight', (64, 3, 7, 7)),
    ('backbone.bn1.running_mean', (64,)),
    ('backbone.layer1.0.conv1.weight', (64, 64, 1, 1)),
    ('backbone.layer1.0.downsample.0.weight', (256, 64, 1, 1)),
    ('backbone.layer1.0.downsample.1.weight', (256,)),
    ('backbone.layer2.3.conv3.weight', (512, 128, 1, 1)),
    ('backbone.layer3.5.bn2.bias', (256,)),
    ('backbone.layer4.2.conv2.weight', (512, 512, 3, 3)),
    ('neck.lateral_convs.0.conv.weight', (256, 256, 1, 1)),
    ('neck.lateral_convs.3.conv.weight', (256, 2048, 1, 1)),
    ('neck.lateral_convs.3.conv.bias', (256,)),
    ('neck.fpn_convs.0.conv.weight', (256, 256, 3, 3)),
    ('neck.fpn_convs.3.conv.bias', (256,)),
    ('rpn_head.rpn_conv.weight', (256, 256, 3, 3)),
    ('rpn_head.rpn_conv.bias', (256,)),
    ('rpn_head.rpn_cls.weight', (3, 256, 1, 1)),
    ('rpn_head.rpn_reg.weight', (12, 256, 1, 1)),
    ('roi_head.bbox_head.shared_fcs.0.weight', (1024, 12544)),
    ('roi_head.bbox_head.shared_fcs.1.weight', (1024, 1024)),
    ('roi_head.bbox_head.fc_cls.weight', (81, 1024)),
    ('roi_head.bbox_head.fc_cls.bias', (81,)),
    ('roi_head.bbox_head.fc_reg.weight', (320, 1024)),
    ('roi_head.bbox_head.fc_reg.bias', (320,)),
]
# mmdet's checkpoint has 348 entries: the ResNet-50 (no fc), 16 FPN, 6 RPN, 8 box-head tensors.
MMDET_NUM_KEYS = 348


@pytest.fixture(scope='module')
def r50_model():
    cfg = Config.fromfile(R50_CONFIG)
    cfg.model.backbone.init_cfg = None  # no ImageNet weights here
    model = MODELS.build(cfg.model)
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    model.init_weights()
    return model


def make_batch(sizes, num_classes=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs, samples = [], []
    for h, w in sizes:
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(2 * h, 2 * w),
                                             scale_factor=(0.5, 0.5)))
        xy = torch.rand(3, 2, generator=g) * torch.tensor([w / 2, h / 2])
        wh = 16 + torch.rand(3, 2, generator=g) * 48
        sample.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                                           labels=torch.randint(0, num_classes, (3,), generator=g))
        samples.append(sample)
        imgs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
    return dict(inputs=imgs, data_samples=samples)


def test_state_dict_keys_match_mmdetection(r50_model):
    state = r50_model.state_dict()
    for key, shape in MMDET_KEYS:
        assert key in state, f'missing mmdet key {key}'
        assert tuple(state[key].shape) == shape, key
    # BatchNorm's num_batches_tracked buffers are in both; nothing else may differ in count.
    assert len(state) == MMDET_NUM_KEYS


def test_one_training_iteration(r50_model):
    model = r50_model.train()
    data = model.data_preprocessor(make_batch([(192, 256), (224, 160)]), True)
    assert data['inputs'].shape == (2, 3, 224, 256)            # padded to a multiple of 32
    x = model.extract_feat(data['inputs'])
    assert [tuple(f.shape) for f in x] == [(2, 256, 56, 64), (2, 256, 28, 32), (2, 256, 14, 16),
                                           (2, 256, 7, 8), (2, 256, 4, 4)]
    cls_scores, bbox_preds = model.rpn_head(x)
    assert [tuple(c.shape) for c in cls_scores] == [(2, 3) + tuple(f.shape[-2:]) for f in x]
    assert [tuple(b.shape) for b in bbox_preds] == [(2, 12) + tuple(f.shape[-2:]) for f in x]

    losses = model(**data, mode='loss')
    assert set(losses) == {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'acc', 'loss_bbox'}
    assert len(losses['loss_rpn_cls']) == len(losses['loss_rpn_bbox']) == 5
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)
    model.zero_grad()
    total.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    # (zero_init_residual: each block's last BN weight starts at 0, so its branch convs get no
    # gradient on the first step; the downsample path and the BN weight itself do.)
    for name in ('backbone.layer4.0.downsample.0.weight', 'backbone.layer4.2.bn3.weight',
                 'backbone.layer2.0.downsample.0.weight', 'neck.fpn_convs.0.conv.weight',
                 'rpn_head.rpn_cls.weight', 'roi_head.bbox_head.fc_reg.weight'):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    # frozen_stages=1: the stem and layer1 get no gradient
    assert not model.backbone.conv1.weight.requires_grad
    assert not model.backbone.layer1[0].conv1.weight.requires_grad


def test_one_prediction(r50_model):
    model = r50_model.eval()
    batch = make_batch([(160, 224)])
    with torch.no_grad():
        data = model.data_preprocessor(batch, False)
        x = model.extract_feat(data['inputs'])
        proposals = model.rpn_head.predict(x, data['data_samples'])
        results = model(**data, mode='predict')
    assert proposals[0].bboxes.shape[1] == 4 and len(proposals[0]) <= 1000
    boxes = proposals[0].bboxes
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 224).all() and (boxes[:, 3] <= 160).all()
    pred = results[0].pred_instances
    assert set(pred.keys()) == {'bboxes', 'scores', 'labels'}
    assert len(pred) <= 100
    assert pred.bboxes.shape == (len(pred), 4) and pred.labels.dtype == torch.long
    # Boxes are in the original image frame: twice the network input (scale_factor 0.5).
    assert (pred.bboxes[:, 2] <= 448 + 1e-3).all() and (pred.bboxes[:, 3] <= 320 + 1e-3).all()
    # mode='tensor' gives the raw head outputs.
    with torch.no_grad():
        outs = model(data['inputs'], data['data_samples'], mode='tensor')
    assert len(outs) == 4 and outs[2].shape[1] == 81 and outs[3].shape[1] == 320
