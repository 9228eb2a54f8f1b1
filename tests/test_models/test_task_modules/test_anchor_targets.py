"""anchor_targets(): labels, weights, encoded targets and avg_factor on hand-checkable anchors."""
from __future__ import annotations

import torch
from mmengine.structures import InstanceData

from rcnn_det.models.task_modules import (DeltaXYWHBBoxCoder, MaxIoUAssigner, PseudoSampler,
                                          RandomSampler, anchor_targets)
from rcnn_det.models.task_modules.anchor_targets import AnchorTrainRecipe

# Five anchors against one ground truth [0, 0, 10, 10] (pos_iou_thr 0.7, neg_iou_thr 0.3):
ANCHORS = torch.tensor([
    [0., 0., 10., 10.],     # 0: IoU 1         -> positive
    [0., 0., 20., 10.],     # 1: IoU 0.5       -> ignored
    [30., 30., 40., 40.],   # 2: IoU 0         -> negative
    [1., 0., 11., 10.],     # 3: IoU 90 / 110  -> positive, target dx = -1 / 10
    [0., 0., 10., 10.],     # 4: IoU 1 but centred on padding -> left out
])
VALID = torch.tensor([[True, True, True, True, False]])
GT = InstanceData(bboxes=torch.tensor([[0., 0., 10., 10.]]), labels=torch.tensor([5]))
ASSIGNER = MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)
CODER = DeltaXYWHBBoxCoder()
NUM_CLASSES = 8


def recipe(sampler=None, assigner=ASSIGNER, pos_weight=-1) -> AnchorTrainRecipe:
    return AnchorTrainRecipe(assigner, sampler or PseudoSampler(), pos_weight)


def run(sampler=None, valid=VALID, gts=(GT,), **kwargs):
    return anchor_targets(ANCHORS, valid, list(gts), [None] * len(gts), recipe(sampler), CODER,
                          NUM_CLASSES, **kwargs)


def test_hand_checked_single_image_with_the_pseudo_sampler():
    t = run()
    assert t.labels.tolist() == [[5, 8, 8, 5, 8]]          # background = num_classes
    assert t.label_weights.tolist() == [[1., 0., 1., 1., 0.]]
    expected_targets = torch.zeros(1, 5, 4)
    expected_targets[0, 3] = torch.tensor([-0.1, 0., 0., 0.])
    torch.testing.assert_close(t.bbox_targets, expected_targets)
    expected_weights = torch.zeros(1, 5, 4)
    expected_weights[0, [0, 3]] = 1.
    torch.testing.assert_close(t.bbox_weights, expected_weights)
    assert t.avg_factor == 2.0 and t.num_pos == 2           # positives only (PseudoSampler)


def test_with_sampler_avg_factor_counts_sampled_anchors():
    sampler = RandomSampler(num=256, pos_fraction=0.5, add_gt_as_proposals=False)
    t = run(sampler)
    assert t.labels.tolist() == [[5, 8, 8, 5, 8]]
    assert t.label_weights.tolist() == [[1., 0., 1., 1., 0.]]
    assert t.avg_factor == 3.0 and t.num_pos == 2
    # a sampler that keeps one positive and one negative: the rest get weight 0
    t = run(RandomSampler(num=2, pos_fraction=0.5, add_gt_as_proposals=False))
    assert t.label_weights.sum() == 2 and t.bbox_weights[..., 0].sum() == 1
    assert t.label_weights[0, 2] == 1 and t.avg_factor == 2.0
    assert t.label_weights[0, 1] == 0 and t.label_weights[0, 4] == 0


def test_invalid_anchors_get_zero_weight_even_when_they_match():
    all_valid = run(valid=torch.ones(1, 5, dtype=torch.bool))
    assert all_valid.labels[0, 4] == 5 and all_valid.label_weights[0, 4] == 1
    t = run()
    assert t.labels[0, 4] == NUM_CLASSES and t.label_weights[0, 4] == 0
    assert (t.bbox_weights[0, 4] == 0).all() and (t.bbox_targets[0, 4] == 0).all()


def test_class_agnostic_and_pos_weight_and_decoded_targets():
    t = anchor_targets(ANCHORS, VALID, [GT], [None], recipe(pos_weight=2.5), CODER,
                       num_classes=1, class_agnostic=True)
    assert t.labels.tolist() == [[0, 1, 1, 0, 1]]
    assert t.label_weights.tolist() == [[2.5, 0., 1., 2.5, 0.]]
    t = run(reg_decoded_bbox=True)
    torch.testing.assert_close(t.bbox_targets[0, [0, 3]], GT.bboxes.expand(2, 4))
    assert (t.bbox_targets[0, [1, 2, 4]] == 0).all()


def test_two_images_one_without_objects_and_ignored_regions():
    no_objects = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    ignore = InstanceData(bboxes=torch.tensor([[29., 29., 41., 41.]]), labels=torch.zeros(1))
    assigner = MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3, ignore_iof_thr=0.5)
    t = anchor_targets(ANCHORS, valid, [GT, no_objects], [ignore, None],
                       recipe(assigner=assigner), CODER, NUM_CLASSES)
    # image 0: anchor 2 lies inside the ignored region -> weight 0; anchor 4 is valid here
    assert t.labels[0].tolist() == [5, 8, 8, 5, 5]
    assert t.label_weights[0].tolist() == [1., 0., 0., 1., 1.]
    # image 1: no objects -> every valid anchor is a negative
    assert t.labels[1].tolist() == [8] * 5
    assert t.label_weights[1].tolist() == [1., 1., 1., 0., 0.]
    assert (t.bbox_weights[1] == 0).all()
    # mmdet counts at least one positive per image: 3 + 1
    assert t.avg_factor == 4.0 and t.num_pos == 3


def test_train_recipe_defaults_to_the_pseudo_sampler():
    built = AnchorTrainRecipe.from_cfg(dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7,
                                                          neg_iou_thr=0.3)), 'x')
    assert isinstance(built.sampler, PseudoSampler) and built.pos_weight == -1
    assert AnchorTrainRecipe.from_cfg(None, 'x') is None


def test_avg_factor_counts_at_least_one_positive_per_image_like_mmdet():
    no_objects = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    sampler = RandomSampler(num=256, pos_fraction=0.5, add_gt_as_proposals=False)
    t = run(sampler, valid=torch.ones(1, 5, dtype=torch.bool), gts=(no_objects,))
    # mmdet: max(0, 1) + max(5, 1) = 6
    assert t.avg_factor == 6.0
