"""Seed 003 (a Faster R-CNN built by hand on VGG16) as rcnn_det configs: the seed's anchor
numbers from the config's AnchorGenerator and RPN assigner, RoI pooling, the built model's keys,
and one training iteration and one prediction of the COCO config."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torchvision
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData

from rcnn_det.registry import MODELS, TASK_UTILS
from rcnn_det.structures import DetDataSample
from rcnn_det.structures.bbox import bbox_overlaps
from conftest import REPO_ROOT

VGG16_CONFIG = REPO_ROOT / 'configs/faster_rcnn/faster_rcnn_vgg16_1x_coco.py'

# The seed's running example: an 800 x 800 image, sub_sample 16, two boxes given as
# [y1, x1, y2, x2].
SEED_IMG, SEED_STRIDE, SEED_MAP = 800, 16, 50
SEED_RATIOS, SEED_SCALES = [0.5, 1, 2], [8, 16, 32]
SEED_GT_YXYX = [[20, 30, 400, 500], [300, 400, 500, 600]]
# The seed's printed anchor_base, [y1, x1, y2, x2] around the centre (8, 8).
SEED_ANCHOR_BASE_YXYX = [
    [-37.254833, -82.50967, 53.254833, 98.50967],
    [-82.50967, -173.01933, 98.50967, 189.01933],
    [-173.01933, -354.03867, 189.01933, 370.03867],
    [-56., -56., 72., 72.],
    [-120., -120., 136., 136.],
    [-248., -248., 264., 264.],
    [-82.50967, -37.254833, 98.50967, 53.254833],
    [-173.01933, -82.50967, 189.01933, 98.50967],
    [-354.03867, -173.01933, 370.03867, 189.01933]]


@pytest.fixture(scope='module')
def cfg() -> Config:
    return Config.fromfile(VGG16_CONFIG)


def seed_anchors() -> np.ndarray:
    """The seed's code for all anchors, as it is written there: (22500, 4) [y1, x1, y2, x2]."""
    ctr_x = np.arange(16, (SEED_MAP + 1) * 16, 16)
    ctr_y = np.arange(16, (SEED_MAP + 1) * 16, 16)
    ctr = []
    for x in range(len(ctr_x)):          # x in the outer loop: the seed's anchors are x-major
        for y in range(len(ctr_y)):
            ctr.append((ctr_y[y] - 8, ctr_x[x] - 8))
    anchors = np.zeros((SEED_MAP * SEED_MAP * 9, 4), dtype=np.float32)
    index = 0
    for ctr_y_, ctr_x_ in ctr:
        for i in range(len(SEED_RATIOS)):
            for j in range(len(SEED_SCALES)):
                h = SEED_STRIDE * SEED_SCALES[j] * np.sqrt(SEED_RATIOS[i])
                w = SEED_STRIDE * SEED_SCALES[j] * np.sqrt(1. / SEED_RATIOS[i])
                anchors[index] = [ctr_y_ - h / 2, ctr_x_ - w / 2, ctr_y_ + h / 2, ctr_x_ + w / 2]
                index += 1
    return anchors


def config_anchors(cfg: Config, **overrides) -> torch.Tensor:
    generator = TASK_UTILS.build(dict(cfg.model.rpn_head.anchor_generator, **overrides))
    (anchors, ) = generator.grid_priors([(SEED_MAP, SEED_MAP)])
    return anchors


def test_anchors_are_the_seeds(cfg):
    anchors = config_anchors(cfg)                                      # (22500, 4) xyxy
    assert anchors.shape == (22500, 4)                                  # 50 * 50 * 9
    generator = TASK_UTILS.build(cfg.model.rpn_head.anchor_generator)
    assert generator.num_base_priors == [9]
    # The seed's anchor_base (around (8, 8)) is the config's first location, y and x swapped.
    base_xyxy = torch.tensor(SEED_ANCHOR_BASE_YXYX)[:, [1, 0, 3, 2]]
    torch.testing.assert_close(anchors[:9], base_xyxy)
    # Its 2500 centres are 8, 24, ..., 792 in each direction: the middle of every 16 px cell.
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    seed_centres = torch.arange(8., 800., 16.)
    torch.testing.assert_close(centres.reshape(50, 50, 9, 2)[0, :, 0, 0], seed_centres)
    torch.testing.assert_close(centres.reshape(50, 50, 9, 2)[:, 0, 0, 1], seed_centres)
    assert torch.all(centres.reshape(50, 50, 9, 2).std(2) < 1e-4)  # 9 anchors, one centre

    # All 22500 anchors equal the seed's, in another order: the seed loops over x outside y,
    # so its anchor (x * 50 + y) * 9 + a is the config's (y * 50 + x) * 9 + a, the row-major
    # order of the RPN's (H, W, A) outputs. (The seed's own RPN outputs are row-major too,
    # permute(0, 2, 3, 1), so its x-major anchors pair each prediction with the transposed
    # location.)
    seed = torch.from_numpy(seed_anchors())[:, [1, 0, 3, 2]]            # to xyxy
    seed_yx = seed.reshape(50, 50, 9, 4).transpose(0, 1).reshape(-1, 4)
    torch.testing.assert_close(anchors, seed_yx)

    # mmdetection's default centre_offset=0 puts the same anchors half a cell (8 px) up-left.
    corner = config_anchors(cfg, center_offset=0.0)
    torch.testing.assert_close(corner + 8, anchors)


def test_rpn_assignment_reproduces_the_seeds_numbers(cfg):
    anchors = config_anchors(cfg)
    # The seed keeps 8940 anchors that lie inside the 800 x 800 image ...
    inside = ((anchors[:, :2] >= 0) & (anchors[:, 2:] <= SEED_IMG)).all(1)
    assert int(inside.sum()) == 8940
    gt = torch.tensor(SEED_GT_YXYX, dtype=torch.float32)[:, [1, 0, 3, 2]]
    ious = bbox_overlaps(gt, anchors[inside])                           # (2, 8940)
    # ... whose best IoU with each box is 0.68130493 and 0.61035156,
    torch.testing.assert_close(ious.max(1).values, torch.tensor([0.68130493, 0.61035156]))
    # and 18 anchors tie at those maxima (its gt_argmax_ious); no IoU reaches 0.7, so the
    # config's RPN assigner (the seed's rules) makes exactly those 18 positive.
    assigner = TASK_UTILS.build(cfg.model.train_cfg.rpn.assigner)
    result = assigner.assign(InstanceData(priors=anchors[inside]),
                             InstanceData(bboxes=gt, labels=torch.zeros(2, dtype=torch.long)))
    is_best = (ious == ious.max(1, keepdim=True).values).any(0)
    assert int(is_best.sum()) == 18
    assert torch.equal(result.gt_inds > 0, is_best)
    # negatives: best IoU under 0.3 (label 0 in the seed)
    assert torch.equal(result.gt_inds == 0, (ious.max(0).values < 0.3) & ~is_best)


def test_roi_pool_extractor_on_the_stride_16_map(cfg):
    extractor = MODELS.build(dict(cfg.model.roi_head.bbox_roi_extractor, out_channels=8))
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 8, 50, 50, generator=g)
    xy = torch.rand(5, 2, generator=g) * 500
    rois = torch.cat([torch.tensor([[0.], [1.], [0.], [1.], [1.]]), xy,
                      xy + 16 + torch.rand(5, 2, generator=g) * 280], 1)
    out = extractor((feat, ), rois)
    assert out.shape == (5, 8, 7, 7)                                   # the seed's 7 x 7 pooling
    torch.testing.assert_close(out, torchvision.ops.roi_pool(feat, rois, 7, 1 / 16))


@pytest.fixture(scope='module')
def vgg16_model(cfg):
    model_cfg = cfg.model.copy()
    model_cfg.backbone.init_cfg = None  # no ImageNet weights here
    model = MODELS.build(model_cfg)
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    model.init_weights()
    return model


def test_built_model_has_the_seeds_layers(vgg16_model):
    state = {k: tuple(v.shape) for k, v in vgg16_model.state_dict().items()}
    assert state['backbone.features.0.weight'] == (64, 3, 3, 3)
    assert state['backbone.features.28.weight'] == (512, 512, 3, 3)          # conv5_3
    assert not any(k.startswith('neck') for k in state)
    assert state['rpn_head.rpn_conv.weight'] == (512, 512, 3, 3)             # mid_channels 512
    assert state['rpn_head.rpn_cls.weight'] == (18, 512, 1, 1)               # 9 anchors x 2
    assert state['rpn_head.rpn_reg.weight'] == (36, 512, 1, 1)               # 9 anchors x 4
    assert state['roi_head.bbox_head.shared_fcs.0.weight'] == (4096, 25088)  # 512 * 7 * 7
    assert state['roi_head.bbox_head.shared_fcs.1.weight'] == (4096, 4096)
    assert state['roi_head.bbox_head.fc_cls.weight'] == (81, 4096)
    assert state['roi_head.bbox_head.fc_reg.weight'] == (320, 4096)
    # conv1_x and conv2_x are frozen (frozen_stages=2), conv3_1 onwards trains
    params = dict(vgg16_model.named_parameters())
    assert not params['backbone.features.7.weight'].requires_grad
    assert params['backbone.features.10.weight'].requires_grad


def make_batch(size: int, num_classes: int = 80) -> dict:
    g = torch.Generator().manual_seed(0)
    sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(2 * size, 2 * size),
                                         scale_factor=(0.5, 0.5)))
    xy = torch.rand(2, 2, generator=g) * size / 2
    wh = 32 + torch.rand(2, 2, generator=g) * 48
    sample.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                                       labels=torch.randint(0, num_classes, (2, ), generator=g))
    img = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
    return dict(inputs=[img], data_samples=[sample])


def test_coco_config_trains_one_iteration_and_predicts(vgg16_model):
    model = vgg16_model.train()
    data = model.data_preprocessor(make_batch(160), True)
    losses = model(**data, mode='loss')
    assert {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'acc'} <= set(losses)
    total = sum(v if torch.is_tensor(v) else sum(v) for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    params = dict(model.named_parameters())
    assert params['roi_head.bbox_head.shared_fcs.0.weight'].grad is not None
    assert params['backbone.features.10.weight'].grad is not None
    assert params['backbone.features.0.weight'].grad is None                   # frozen

    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(make_batch(160), False)
        (result, ) = model(**data, mode='predict')
    pred = result.pred_instances
    assert pred.bboxes.shape[1] == 4 and len(pred.bboxes) <= 100
    assert len(pred.scores) == len(pred.labels) == len(pred.bboxes)
    # rescaled to the original (2x) frame
    assert (pred.bboxes[:, 2:] <= 320 + 1e-3).all()
