"""Recipes read once at build time: mmdet dicts -> frozen dataclasses, unknown keys fail with the
config path and the closest accepted name."""
from __future__ import annotations

import dataclasses

import pytest
from mmengine.config import ConfigDict

from rcnn_det.models.recipes import (DetectionRecipe, NMSConfig, ProposalRecipe, RecipeReader,
                                     build_or_pass)
from rcnn_det.models.task_modules import MaxIoUAssigner
from rcnn_det.registry import TASK_UTILS

RPN_PROPOSAL = dict(nms_pre=2000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7),
                    min_bbox_size=0)
RCNN_TEST = dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)


def test_proposal_recipe_from_mmdet_dict():
    recipe = ProposalRecipe.from_cfg(RPN_PROPOSAL, 'train_cfg.rpn_proposal')
    assert recipe == ProposalRecipe(nms_pre=2000, max_per_img=1000,
                                    nms=NMSConfig(iou_threshold=0.7), min_bbox_size=0,
                                    score_thr=0.0)
    assert ProposalRecipe.from_cfg(ConfigDict(RPN_PROPOSAL), 'x') == recipe
    assert ProposalRecipe.from_cfg(None, 'x') is None
    assert ProposalRecipe.from_cfg(recipe, 'x') is recipe
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.nms_pre = 5
    # the caller's dict is not consumed
    assert 'nms' in RPN_PROPOSAL


def test_detection_recipe_from_mmdet_dict():
    recipe = DetectionRecipe.from_cfg(RCNN_TEST, 'test_cfg.rcnn')
    assert (recipe.score_thr, recipe.nms.iou_threshold, recipe.max_per_img) == (0.05, 0.5, 100)
    with_mask = DetectionRecipe.from_cfg(dict(RCNN_TEST, mask_thr_binary=0.4), 'x')
    assert with_mask.mask_thr_binary == 0.4


@pytest.mark.parametrize('cls, cfg, where, bad, closest', [
    (ProposalRecipe, dict(RPN_PROPOSAL, max_per_image=10), 'test_cfg.rpn', 'max_per_image',
     'max_per_img'),
    (ProposalRecipe, dict(RPN_PROPOSAL, min_box_size=1), 'train_cfg.rpn_proposal',
     'min_box_size', 'min_bbox_size'),
    (DetectionRecipe, dict(RCNN_TEST, score_th=0.1), 'test_cfg.rcnn', 'score_th', 'score_thr'),
])
def test_unknown_key_names_where_and_closest(cls, cfg, where, bad, closest):
    with pytest.raises(KeyError) as info:
        cls.from_cfg(cfg, where)
    message = str(info.value)
    assert where in message and f"'{bad}'" in message and f"did you mean '{closest}'" in message


def test_unknown_key_without_close_match_lists_accepted_keys():
    with pytest.raises(KeyError, match='accepted keys') as info:
        DetectionRecipe.from_cfg(dict(RCNN_TEST, zzz=1), 'test_cfg.rcnn')
    assert 'max_per_img' in str(info.value)


def test_mmdet2_keys_and_nms_errors():
    with pytest.raises(KeyError, match='mmdet 2.x'):
        ProposalRecipe.from_cfg(dict(nms_pre=10, max_num=5, nms_thr=0.7), 'x')
    with pytest.raises(KeyError, match="missing 'nms'"):
        ProposalRecipe.from_cfg(dict(nms_pre=10), 'test_cfg.rpn')
    with pytest.raises(ValueError, match='nms_rotated'):
        DetectionRecipe.from_cfg(dict(RCNN_TEST, nms=dict(type='nms_rotated',
                                                          iou_threshold=0.5)), 'x')
    soft = DetectionRecipe.from_cfg(dict(RCNN_TEST, nms=dict(type='soft_nms', iou_threshold=0.5)),
                                    'x')
    assert soft.nms.type == 'soft_nms' and soft.nms.iou_threshold == 0.5
    with pytest.raises(KeyError, match="nms: unknown key 'iou_thresh'; did you mean 'iou_thr"):
        NMSConfig.from_cfg(dict(type='nms', iou_threshold=0.5, iou_thresh=0.6), 'test_cfg.rcnn')
    with pytest.raises(KeyError, match="test_cfg.rcnn.nms: missing 'iou_threshold'"):
        NMSConfig.from_cfg(dict(type='nms', iou_thresh=0.5), 'test_cfg.rcnn')
    # mmcv's split_thr is accepted and dropped
    assert NMSConfig.from_cfg(dict(type='nms', iou_threshold=0.6, split_thr=10000),
                              'x') == NMSConfig(iou_threshold=0.6)
    with pytest.raises(ValueError, match="size_frame must be one of"):
        ProposalRecipe(size_frame='resized')


def test_recipe_reader_pop_build_and_reject_rest():
    cfg = dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3),
               allowed_border=-1, pos_weight=-1, debug=False)
    reader = RecipeReader(cfg, 'rpn_head.train_cfg', accepted_no_op=('debug',))
    assigner = reader.build('assigner', TASK_UTILS)
    assert isinstance(assigner, MaxIoUAssigner) and assigner.pos_iou_thr == 0.7
    assert reader.build('sampler', TASK_UTILS, None) is None
    assert reader.pop('allowed_border', 0) == -1
    assert reader.pop('missing', 42) == 42
    with pytest.raises(KeyError, match="missing required key 'nope'"):
        reader.pop('nope')
    with pytest.raises(KeyError, match="unknown key 'pos_weight'"):
        reader.reject_rest()                  # pos_weight has not been read yet
    assert reader.pop('pos_weight') == -1
    reader.reject_rest()                      # nothing left: no error
    assert 'assigner' in cfg                  # the caller's dict is not consumed


def test_recipe_reader_reject_rest_names_closest_asked_key():
    reader = RecipeReader(dict(pos_iou_th=0.5, sampler=None), 'roi_head.train_cfg')
    reader.pop('sampler', None)
    reader.pop('pos_iou_thr', 0.7)
    with pytest.raises(KeyError) as info:
        reader.reject_rest()
    assert str(info.value) == ('"roi_head.train_cfg: unknown key \'pos_iou_th\'; '
                               'did you mean \'pos_iou_thr\'?"')
    RecipeReader(None, 'x').reject_rest()


def test_build_or_pass():
    built = build_or_pass(TASK_UTILS, dict(type='MaxIoUAssigner', pos_iou_thr=0.5,
                                           neg_iou_thr=0.4))
    assert isinstance(built, MaxIoUAssigner)
    assert build_or_pass(TASK_UTILS, built) is built
    assert build_or_pass(TASK_UTILS, None) is None
