"""The R50 ATSS COCO config: state-dict keys (mmdet 3.x), one training iteration, one
prediction, the raw outputs."""
from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from conftest import REPO_ROOT
from rcnn_det.registry import MODELS
from test_models.test_detectors.test_faster_rcnn import make_batch

ATSS_CONFIG = REPO_ROOT / 'configs/atss/atss_r50_fpn_1x_coco.py'

# (key, shape) pairs of mmdetection 3.x's atss_r50_fpn_1x_coco checkpoint beyond the backbone.
MMDET_KEYS = [
    ('backbone.layer4.2.conv3.weight', (2048, 512, 1, 1)),
    ('neck.lateral_convs.0.conv.weight', (256, 512, 1, 1)),     # start_level=1: C3 first
    ('neck.lateral_convs.2.conv.weight', (256, 2048, 1, 1)),
    ('neck.fpn_convs.3.conv.weight', (256, 256, 3, 3)),         # extra convs on the outputs
    ('neck.fpn_convs.4.conv.bias', (256,)),
    ('bbox_head.cls_convs.0.conv.weight', (256, 256, 3, 3)),
    ('bbox_head.cls_convs.0.gn.weight', (256,)),
    ('bbox_head.reg_convs.3.gn.bias', (256,)),
    ('bbox_head.atss_cls.weight', (80, 256, 3, 3)),
    ('bbox_head.atss_cls.bias', (80,)),
    ('bbox_head.atss_reg.weight', (4, 256, 3, 3)),
    ('bbox_head.atss_centerness.weight', (1, 256, 3, 3)),
    ('bbox_head.scales.0.scale', ()),
    ('bbox_head.scales.4.scale', ()),
]
# ResNet-50 without fc (318), FPN with 3 laterals and 5 output convs (16), head (35).
MMDET_NUM_KEYS = 318 + 16 + 35


@pytest.fixture(scope='module')
def atss_model():
    cfg = Config.fromfile(ATSS_CONFIG)
    cfg.model.backbone.init_cfg = None  # no ImageNet weights here
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    model.init_weights()
    return model


def test_state_dict_keys_match_mmdetection(atss_model):
    state = atss_model.state_dict()
    assert type(atss_model).__name__ == 'ATSS'
    for key, shape in MMDET_KEYS:
        assert key in state, f'missing mmdet key {key}'
        assert tuple(state[key].shape) == shape, key
    assert 'bbox_head.cls_convs.0.conv.bias' not in state      # GroupNorm follows the conv
    assert len(state) == MMDET_NUM_KEYS


def test_one_training_iteration(atss_model):
    model = atss_model.train()
    data = model.data_preprocessor(make_batch([(192, 256), (224, 160)]), True)
    x = model.extract_feat(data['inputs'])
    # strides 8..128 on a 224 x 256 batch
    assert [tuple(f.shape) for f in x] == [(2, 256, 28, 32), (2, 256, 14, 16), (2, 256, 7, 8),
                                           (2, 256, 4, 4), (2, 256, 2, 2)]
    losses = model(**data, mode='loss')
    assert set(losses) == {'loss_cls', 'loss_bbox', 'loss_centerness'}
    assert all(len(v) == 5 for v in losses.values())
    total, log_vars = model.parse_losses(losses)
    assert torch.isfinite(total) and log_vars['loss_bbox'] > 0
    model.zero_grad()
    total.backward()
    for name in ('bbox_head.atss_cls.weight', 'bbox_head.atss_reg.weight',
                 'bbox_head.atss_centerness.weight', 'bbox_head.scales.0.scale',
                 'bbox_head.cls_convs.0.gn.weight', 'neck.fpn_convs.0.conv.weight',
                 'backbone.layer4.0.downsample.0.weight'):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_one_prediction_and_raw_outputs(atss_model):
    model = atss_model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(make_batch([(160, 224)]), False)
        results = model(**data, mode='predict')
        cls_scores, bbox_preds, centernesses = model(data['inputs'], data['data_samples'],
                                                     mode='tensor')
    pred = results[0].pred_instances
    assert set(pred.keys()) == {'bboxes', 'scores', 'labels'} and len(pred) <= 100
    # random init: class probabilities start at 0.01, below score_thr 0.05
    assert len(pred) == 0 and pred.bboxes.shape == (0, 4)
    assert [tuple(c.shape) for c in cls_scores] == [(1, 80, 20, 28), (1, 80, 10, 14),
                                                     (1, 80, 5, 7), (1, 80, 3, 4), (1, 80, 2, 2)]
    assert [b.shape[1] for b in bbox_preds] == [4] * 5
    assert [c.shape[1] for c in centernesses] == [1] * 5
    # with a lower threshold every survivor is in the original frame (twice the input)
    recipe = model.bbox_head.test_recipe
    model.bbox_head.test_recipe = dataclasses.replace(recipe, score_thr=0.0)
    try:
        with torch.no_grad():
            pred = model(**data, mode='predict')[0].pred_instances
    finally:
        model.bbox_head.test_recipe = recipe
    assert len(pred) == 100
    assert (pred.bboxes[:, 2] <= 448 + 1e-3).all() and (pred.bboxes[:, 3] <= 320 + 1e-3).all()
    assert (pred.scores[:-1] >= pred.scores[1:]).all()
