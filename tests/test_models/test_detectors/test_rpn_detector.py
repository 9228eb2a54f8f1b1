"""``RPN``: mmdetection's proposal-only detector; its final proposals are filtered by
``min_bbox_size`` in the original image, as mmdetection's RPN detector does."""
from __future__ import annotations

import pytest
import torch
from mmengine.structures import InstanceData

from rcnn_det.models.recipes import ProposalRecipe
from rcnn_det.registry import MODELS
from test_models.test_dense_heads.test_rpn_head import TRAIN_CFG as RPN_TRAIN
from test_models.test_dense_heads.test_rpn_head import TEST_CFG
from tests.conftest import build_initialised
from rcnn_det.structures import DetDataSample

RPN_TEST = dict(TEST_CFG, nms_pre=200, max_per_img=50)


def rpn_cfg(**test) -> dict:
    return dict(
        type='RPN',
        backbone=dict(type='ResNet', depth=18, num_stages=4, out_indices=(0, 1, 2, 3),
                      norm_cfg=dict(type='BN', requires_grad=True), init_cfg=None),
        neck=dict(type='FPN', in_channels=[64, 128, 256, 512], out_channels=32, num_outs=5),
        rpn_head=dict(type='RPNHead', in_channels=32, feat_channels=32),
        train_cfg=dict(rpn=RPN_TRAIN), test_cfg=dict(rpn=dict(RPN_TEST, **test)))


def samples(scale=(2.0, 0.5)):
    out = []
    for i in range(2):
        sample = DetDataSample(metainfo=dict(img_shape=(64, 96), pad_shape=(64, 96),
                                             batch_input_shape=(64, 96), scale_factor=scale,
                                             ori_shape=(128, 48)))
        sample.gt_instances = InstanceData(bboxes=torch.tensor([[6., 8., 40., 44.]]) + i,
                                           labels=torch.tensor([3]))
        out.append(sample)
    return out


def test_state_dict_names_losses_and_proposals_in_the_original_image():
    model = build_initialised(rpn_cfg())
    assert any(k.startswith('bbox_head.rpn_conv.') for k in model.state_dict())
    assert model.bbox_head.test_recipe.size_frame == 'original'
    losses = model.loss(torch.randn(2, 3, 64, 96), samples())
    assert set(losses) == {'loss_rpn_cls', 'loss_rpn_bbox'}
    model.eval()
    inputs = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model.predict(inputs, samples())
        frame = model.predict(inputs, samples(), rescale=False)
    for res, raw in zip(out, frame):
        pred = res.pred_instances
        assert 0 < len(pred) <= 50 and (pred.labels == 0).all()
        assert torch.equal(pred.bboxes, raw.pred_instances.bboxes
                           / torch.tensor([2.0, 0.5, 2.0, 0.5]))


def test_min_bbox_size_is_measured_in_the_original_image():
    model = build_initialised(rpn_cfg(min_bbox_size=20.0, max_per_img=10000)).eval()
    inputs = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model.predict(inputs, samples())
        outs = model.bbox_head(model.extract_feat(inputs))
    metas = [s.metainfo for s in samples()]

    def proposals(**kwargs):
        recipe = ProposalRecipe.from_cfg(dict(RPN_TEST, max_per_img=10000, **kwargs), 'x')
        return model.bbox_head.predict_by_feat(*outs, metas, recipe)
    every = proposals(min_bbox_size=-1)
    original = proposals(min_bbox_size=20.0, size_frame='original')
    input_frame = proposals(min_bbox_size=20.0)
    for res, all_res, in_original, in_input in zip(out, every, original, input_frame):
        sides = res.pred_instances.bboxes[:, 2:] - res.pred_instances.bboxes[:, :2]
        assert (sides > 20.0).all()                     # original-image pixels
        all_sides = (all_res.bboxes[:, 2:] - all_res.bboxes[:, :2]) / torch.tensor([2.0, 0.5])
        assert not (all_sides > 20.0).all()             # the filter had boxes to remove
        assert torch.equal(res.pred_instances.bboxes * torch.tensor([2.0, 0.5, 2.0, 0.5]),
                           in_original.bboxes)
        assert len(in_input) != len(in_original)       # another frame, another filter


def test_unknown_cfg_key_is_named():
    cfg = rpn_cfg()
    cfg['test_cfg'] = dict(rpn=RPN_TEST, rcnn=dict())
    with pytest.raises(KeyError, match="model.test_cfg: unknown key 'rcnn'"):
        MODELS.build(cfg)
