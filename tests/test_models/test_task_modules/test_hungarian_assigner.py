"""HungarianAssigner against brute force over every one-to-one matching of small problems, on
integer cost matrices (many ties) and on Deformable DETR's three costs over random boxes."""
from __future__ import annotations

import itertools
import random

import pytest
import torch
from mmengine.structures import InstanceData

from rcnn_det.models.task_modules import (BBoxL1Cost, FocalLossCost, HungarianAssigner, IoUCost,
                                          hungarian_match)
from rcnn_det.registry import TASK_UTILS

DEFORMABLE_DETR_COSTS = [dict(type='FocalLossCost', weight=2.0),
                         dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                         dict(type='IoUCost', iou_mode='giou', weight=2.0)]


class GivenCost:
    """A match cost that returns the matrix stored in ``pred_instances.cost`` (Q, G)."""

    def __call__(self, pred_instances, gt_instances, img_meta=None, **kwargs):
        return pred_instances.cost


def brute_force_min(cost: list[list[float]]) -> float:
    """Least total cost of matching min(Q, G) pairs one-to-one, over every injection."""
    nq, ng = len(cost), len(cost[0])
    if nq >= ng:     # each gt j goes to a distinct prediction perm[j]
        return min(sum(cost[p][j] for j, p in enumerate(perm))
                   for perm in itertools.permutations(range(nq), ng))
    return min(sum(cost[i][g] for i, g in enumerate(perm))      # each prediction i to gt perm[i]
               for perm in itertools.permutations(range(ng), nq))


def check_is_optimal_matching(result, cost: torch.Tensor, gt_labels: torch.Tensor) -> None:
    nq, ng = cost.shape
    gt_inds = result.gt_inds.tolist()
    matched = [k - 1 for k in gt_inds if k > 0]
    assert result.num_gts == ng and result.gt_inds.dtype == torch.long
    assert all(k >= 0 for k in gt_inds)                    # nothing ignored
    assert len(matched) == min(nq, ng)                      # as many pairs as possible
    assert len(set(matched)) == len(matched)                # each gt used at most once
    total = sum(cost[i, k - 1].item() for i, k in enumerate(gt_inds) if k > 0)
    assert total == pytest.approx(brute_force_min(cost.tolist()), rel=1e-9, abs=1e-9)
    expected_labels = [gt_labels[k - 1].item() if k > 0 else -1 for k in gt_inds]
    assert result.labels.tolist() == expected_labels
    assert result.max_overlaps.tolist() == [0.0] * nq


def given_cost_assigner() -> HungarianAssigner:
    assigner = HungarianAssigner(dict(type='ClassificationCost'))
    assigner.match_costs = [GivenCost()]
    return assigner


@pytest.mark.parametrize('nq,ng', [(6, 4), (3, 5), (4, 4), (1, 3), (5, 1), (2, 2)])
def test_integer_costs_match_brute_force(nq, ng):
    rng = random.Random(nq * 10 + ng)
    assigner = given_cost_assigner()
    for _ in range(15):
        cost = torch.tensor([[float(rng.randint(0, 4)) for _ in range(ng)] for _ in range(nq)])
        labels = torch.tensor([rng.randrange(80) for _ in range(ng)])
        result = assigner.assign(InstanceData(cost=cost), InstanceData(labels=labels))
        check_is_optimal_matching(result, cost, labels)


def detr_problem(rng: random.Random, nq: int, ng: int, num_classes: int = 5):
    img_h, img_w = rng.randint(30, 90), rng.randint(30, 90)

    def boxes(n):
        out = []
        for _ in range(n):
            x, y = rng.uniform(0, img_w - 5), rng.uniform(0, img_h - 5)
            out.append([x, y, rng.uniform(x + 1, img_w), rng.uniform(y + 1, img_h)])
        return torch.tensor(out).reshape(n, 4)
    pred = InstanceData(scores=torch.randn(nq, num_classes), bboxes=boxes(nq))
    gt = InstanceData(bboxes=boxes(ng), labels=torch.randint(num_classes, (ng,)))
    return pred, gt, dict(img_shape=(img_h, img_w))


@pytest.mark.parametrize('nq,ng', [(6, 4), (3, 5), (5, 5)])
def test_deformable_detr_costs_match_brute_force(nq, ng):
    torch.manual_seed(nq * 10 + ng)
    rng = random.Random(nq * 10 + ng)
    assigner = TASK_UTILS.build(dict(type='HungarianAssigner', match_costs=DEFORMABLE_DETR_COSTS))
    for _ in range(10):
        pred, gt, meta = detr_problem(rng, nq, ng)
        result = assigner.assign(pred, gt, img_meta=meta)
        cost = (2.0 * FocalLossCost()(pred, gt)
                + 5.0 * BBoxL1Cost(box_format='xywh')(pred, gt, meta)
                + 2.0 * IoUCost()(pred, gt)).double()
        check_is_optimal_matching(result, cost, gt.labels)


def test_config_builds_the_three_deformable_detr_costs():
    assigner = TASK_UTILS.build(dict(type='HungarianAssigner', match_costs=DEFORMABLE_DETR_COSTS))
    focal, l1, iou = assigner.match_costs
    assert isinstance(focal, FocalLossCost) and focal.weight == 2.0
    assert isinstance(l1, BBoxL1Cost) and (l1.weight, l1.box_format) == (5.0, 'xywh')
    assert isinstance(iou, IoUCost) and (iou.weight, iou.iou_mode) == (2.0, 'giou')
    # one dict is a list of one, as in mmdet
    single = HungarianAssigner(match_costs=dict(type='IoUCost', iou_mode='iou'))
    assert len(single.match_costs) == 1 and single.match_costs[0].iou_mode == 'iou'
    with pytest.raises(ValueError, match='non-empty list'):
        HungarianAssigner(match_costs=[])


def test_hand_made_obvious_matching():
    # queries 1 and 3 sit exactly on gts 1 and 0 with their classes confidently predicted
    gt = InstanceData(bboxes=torch.tensor([[10., 10., 30., 30.], [50., 40., 90., 70.]]),
                      labels=torch.tensor([2, 0]))
    far = [0., 80., 5., 99.]
    pred_boxes = torch.tensor([far, [50., 40., 90., 70.], far, [10., 10., 30., 30.]])
    scores = torch.full((4, 3), -6.0)
    scores[1, 0] = scores[3, 2] = 6.0
    assigner = HungarianAssigner(DEFORMABLE_DETR_COSTS)
    result = assigner.assign(InstanceData(scores=scores, bboxes=pred_boxes), gt,
                             img_meta=dict(img_shape=(100, 100)))
    assert result.gt_inds.tolist() == [0, 2, 0, 1]
    assert result.labels.tolist() == [-1, 0, -1, 2]
    assert result.num_gts == 2 and result.num_preds == 4
    # more gts than predictions: the one prediction takes the gt it fits, the other is dropped
    one = InstanceData(scores=scores[3:], bboxes=pred_boxes[3:])
    result = assigner.assign(one, gt, img_meta=dict(img_shape=(100, 100)))
    assert result.gt_inds.tolist() == [1] and result.labels.tolist() == [2]


def test_empty_gts_and_empty_preds():
    assigner = HungarianAssigner(DEFORMABLE_DETR_COSTS)
    boxes = torch.rand(5, 4) * 10 + torch.tensor([0., 0., 10., 10.])
    pred = InstanceData(scores=torch.randn(5, 3), bboxes=boxes)
    no_gt = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    result = assigner.assign(pred, no_gt, img_meta=dict(img_shape=(20, 20)))
    assert result.num_gts == 0
    assert result.gt_inds.tolist() == [0] * 5                  # all background
    assert result.labels.tolist() == [-1] * 5
    assert result.max_overlaps.tolist() == [0.0] * 5
    gt = InstanceData(bboxes=torch.tensor([[0., 0., 5., 5.]]), labels=torch.tensor([1]))
    no_pred = InstanceData(scores=torch.zeros(0, 3), bboxes=torch.zeros(0, 4))
    result = assigner.assign(no_pred, gt, img_meta=dict(img_shape=(20, 20)))
    assert result.num_gts == 1
    assert result.gt_inds.shape == result.labels.shape == result.max_overlaps.shape == (0,)
    assert result.gt_inds.dtype == result.labels.dtype == torch.long


def test_non_finite_cost_names_the_cost():
    torch.manual_seed(0)
    pred, gt, meta = detr_problem(random.Random(0), 4, 2)
    assigner = HungarianAssigner(DEFORMABLE_DETR_COSTS)
    pred.scores[2, :] = float('nan')           # only the classification cost sees it
    with pytest.raises(ValueError, match='FocalLossCost') as err:
        assigner.assign(pred, gt, img_meta=meta)
    assert 'BBoxL1Cost' not in str(err.value) and 'IoUCost' not in str(err.value)
    assert 'prediction 2' in str(err.value)
    pred, gt, meta = detr_problem(random.Random(1), 4, 2)
    pred.bboxes[1, 2] = float('inf')           # a box: both box costs go non-finite
    with pytest.raises(ValueError, match='BBoxL1Cost') as err:
        assigner.assign(pred, gt, img_meta=meta)
    assert 'IoUCost' in str(err.value) and 'FocalLossCost' not in str(err.value)
    given = given_cost_assigner()
    with pytest.raises(ValueError, match='not finite'):
        given.assign(InstanceData(cost=torch.tensor([[0., float('inf')], [1., 2.]])),
                     InstanceData(labels=torch.tensor([0, 1])))


def test_hungarian_match_returns_pairs_on_the_cost_device():
    rows, cols = hungarian_match(torch.tensor([[4., 1., 3.], [2., 0., 5.], [3., 2., 2.]]))
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]   # 1 + 2 + 2 = 5
    assert rows.dtype == cols.dtype == torch.long


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_result_on_the_input_device():
    torch.manual_seed(0)
    pred, gt, meta = detr_problem(random.Random(5), 6, 3)
    assigner = HungarianAssigner(DEFORMABLE_DETR_COSTS)
    cpu = assigner.assign(pred, gt, img_meta=meta)
    cuda = assigner.assign(pred.to('cuda'), gt.to('cuda'), img_meta=meta)
    for name in ('gt_inds', 'labels', 'max_overlaps'):
        assert getattr(cuda, name).device.type == 'cuda'
    assert cuda.gt_inds.tolist() == cpu.gt_inds.tolist()
    assert cuda.labels.tolist() == cpu.labels.tolist()
