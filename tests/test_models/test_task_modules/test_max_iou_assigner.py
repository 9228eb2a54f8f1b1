"""max_iou_assign / MaxIoUAssigner against a Python-loop port of mmdetection's
MaxIoUAssigner.assign_wrt_overlaps, on random integer boxes (so that IoU ties happen)."""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
from mmengine.structures import InstanceData

from rcnn_det.models.task_modules import MaxIoUAssigner, max_iou_assign
from rcnn_det.registry import TASK_UTILS


def f32(x: float) -> float:
    """torch compares a float32 tensor with a Python float cast to float32; so does the
    reference."""
    return float(np.float32(x))


def ref_assign_wrt_overlaps(ious: list[list[float]], num_priors: int, pos_iou_thr, neg_iou_thr,
                            min_pos_iou=0.0, match_low_quality=True, gt_max_assign_all=True):
    """mmdet 3.x MaxIoUAssigner.assign_wrt_overlaps, element by element; ious[g][n]."""
    num_gts = len(ious)
    assigned = [-1] * num_priors
    if num_gts == 0:
        return [0] * num_priors
    if num_priors == 0:
        return assigned
    max_ov, argmax_ov = [], []
    for n in range(num_priors):
        best, best_g = ious[0][n], 0
        for g in range(1, num_gts):
            if ious[g][n] > best:           # the first maximum wins, as torch.max
                best, best_g = ious[g][n], g
        max_ov.append(best)
        argmax_ov.append(best_g)
    gt_max, gt_argmax = [], []
    for g in range(num_gts):
        best, best_n = ious[g][0], 0
        for n in range(1, num_priors):
            if ious[g][n] > best:
                best, best_n = ious[g][n], n
        gt_max.append(best)
        gt_argmax.append(best_n)
    for n in range(num_priors):
        if isinstance(neg_iou_thr, tuple):
            if f32(neg_iou_thr[0]) <= max_ov[n] < f32(neg_iou_thr[1]):
                assigned[n] = 0
        elif 0 <= max_ov[n] < f32(neg_iou_thr):
            assigned[n] = 0
        if max_ov[n] >= f32(pos_iou_thr):
            assigned[n] = argmax_ov[n] + 1
    if match_low_quality:
        for g in range(num_gts):                # later ground truths overwrite earlier ones
            if gt_max[g] >= f32(min_pos_iou):
                if gt_max_assign_all:
                    for n in range(num_priors):
                        if ious[g][n] == gt_max[g]:
                            assigned[n] = g + 1
                else:
                    assigned[gt_argmax[g]] = g + 1
    return assigned


def int_boxes(rng: random.Random, n: int, span: int = 8, max_side: int = 5) -> torch.Tensor:
    boxes = []
    for _ in range(n):
        x, y = rng.randrange(span), rng.randrange(span)
        boxes.append([x, y, x + rng.randint(1, max_side), y + rng.randint(1, max_side)])
    return torch.tensor(boxes, dtype=torch.float32).reshape(n, 4)


def loop_overlap(a: torch.Tensor, b: torch.Tensor, mode: str = 'iou') -> list[list[float]]:
    """Pairwise IoU (or IoF w.r.t. a) in float32, one pair at a time."""
    out = []
    for i in range(a.shape[0]):
        row = []
        for j in range(b.shape[0]):
            ax1, ay1, ax2, ay2 = a[i].tolist()
            bx1, by1, bx2, by2 = b[j].tolist()
            inter = max(0., min(ax2, bx2) - max(ax1, bx1)) * max(0., min(ay2, by2) - max(ay1, by1))
            area_a = (ax2 - ax1) * (ay2 - ay1)
            union = area_a if mode == 'iof' else area_a + (bx2 - bx1) * (by2 - by1) - inter
            row.append(float(np.float32(inter) / np.float32(union)))  # float32 division
        out.append(row)
    return out


SETTINGS = list(itertools.product(
    [0.5, 0.7, 0.4],                        # pos_iou_thr
    [0.3, 0.5, (0.1, 0.4), (0.0, 0.5)],     # neg_iou_thr
    [0.0, 0.3, 0.5],                        # min_pos_iou
    [True, False],                          # match_low_quality
    [True, False]))                         # gt_max_assign_all


def test_max_iou_assign_matches_loop_reference_with_ties():
    rng = random.Random(0)
    col_ties = row_ties = 0
    for case in range(400):
        pos, neg, min_pos, low, assign_all = SETTINGS[case % len(SETTINGS)]
        num_gts, num_priors = rng.randint(0, 5), rng.randint(0, 25)
        gts, priors = int_boxes(rng, num_gts, 6, 4), int_boxes(rng, num_priors, 6, 4)
        ious_list = loop_overlap(gts, priors)
        ious = torch.tensor(ious_list, dtype=torch.float32).reshape(num_gts, num_priors)
        got = max_iou_assign(ious, pos, neg, min_pos, low, assign_all)
        expected = ref_assign_wrt_overlaps(ious_list, num_priors, pos, neg, min_pos, low,
                                           assign_all)
        assert got.dtype == torch.long
        assert got.tolist() == expected, (case, pos, neg, min_pos, low, assign_all, gts, priors)
        if num_gts > 1 and num_priors > 1:
            col_max, row_max = ious.max(0, keepdim=True).values, ious.max(1, keepdim=True).values
            col_ties += int(((ious == col_max) & (col_max > 0)).sum(0).gt(1).sum())
            row_ties += int(((ious == row_max) & (row_max > 0)).sum(1).gt(1).sum())
    # the random cases really contain ties: between ground truths for one prior, and between
    # priors at one ground truth's best IoU
    assert col_ties > 50 and row_ties > 50, (col_ties, row_ties)


def test_max_iou_assign_hand_computed():
    ious = torch.tensor([[0.9, 0.2, 0.4, 0.0, 0.35],
                         [0.1, 0.2, 0.45, 0.05, 0.35]])
    # prior 0: positive to gt 0; 1: negative; 2: in between -> ignored, but gt 1's best -> 2;
    # 3: negative; 4: in [0.3, 0.7) -> ignored
    got = max_iou_assign(ious, pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)
    assert got.tolist() == [1, 0, 2, 0, -1]
    assert max_iou_assign(ious, 0.7, 0.3, match_low_quality=False).tolist() == [1, 0, -1, 0, -1]
    # min_pos_iou above gt 1's best IoU: no rescue
    assert max_iou_assign(ious, 0.7, 0.3, min_pos_iou=0.5).tolist() == [1, 0, -1, 0, -1]
    # later ground truths overwrite earlier ones on ties (both gts' best is prior 1)
    tie = torch.tensor([[0.2, 0.6], [0.1, 0.6]])
    assert max_iou_assign(tie, 0.7, 0.3).tolist() == [0, 2]
    # gt_max_assign_all: every prior tied at a ground truth's best IoU is claimed
    multi = torch.tensor([[0.5, 0.5, 0.1]])
    assert max_iou_assign(multi, 0.7, 0.3).tolist() == [1, 1, 0]
    assert max_iou_assign(multi, 0.7, 0.3, gt_max_assign_all=False).tolist() == [1, -1, 0]


def test_max_iou_assign_empty():
    assert max_iou_assign(torch.zeros(0, 4), 0.5, 0.4).tolist() == [0, 0, 0, 0]
    assert max_iou_assign(torch.zeros(3, 0), 0.5, 0.4).tolist() == []
    assert max_iou_assign(torch.zeros(0, 0), 0.5, 0.4).tolist() == []


def test_max_iou_assign_ignored_priors_stay_ignored():
    # -1 columns (ignored by iof) are neither negative nor claimed with min_pos_iou >= 0
    ious = torch.tensor([[-1., 0.2, 0.8], [-1., 0.1, 0.0]])
    assert max_iou_assign(ious, 0.7, 0.3, min_pos_iou=0.0).tolist() == [-1, 2, 1]


def instances(gts, labels=None):
    labels = torch.arange(len(gts)) + 10 if labels is None else labels
    return InstanceData(bboxes=gts, labels=labels)


@pytest.mark.parametrize('ignore_wrt_candidates', [True, False])
def test_assigner_with_ignored_boxes_matches_reference(ignore_wrt_candidates):
    rng = random.Random(1)
    for case in range(150):
        num_gts, num_priors, num_ign = rng.randint(0, 4), rng.randint(0, 20), rng.randint(0, 3)
        gts, priors = int_boxes(rng, num_gts), int_boxes(rng, num_priors)
        ignored = int_boxes(rng, num_ign)
        assigner = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0,
                                  ignore_iof_thr=0.5,
                                  ignore_wrt_candidates=ignore_wrt_candidates)
        result = assigner.assign(InstanceData(priors=priors), instances(gts),
                                 InstanceData(bboxes=ignored, labels=torch.zeros(num_ign)))
        ious = loop_overlap(gts, priors)
        if num_ign and num_gts and num_priors:
            if ignore_wrt_candidates:
                iof = [max(row) for row in loop_overlap(priors, ignored, 'iof')]
            else:
                by_ign = loop_overlap(ignored, priors, 'iof')
                iof = [max(by_ign[k][n] for k in range(num_ign)) for n in range(num_priors)]
            for n in range(num_priors):
                if iof[n] > f32(0.5):
                    for g in range(num_gts):
                        ious[g][n] = -1.0
        expected = ref_assign_wrt_overlaps(ious, num_priors, 0.5, 0.4, 0.0)
        assert result.gt_inds.tolist() == expected, case
        assert result.num_gts == num_gts and result.num_preds == num_priors
        expected_max = ([max(ious[g][n] for g in range(num_gts)) for n in range(num_priors)]
                        if num_gts else [0.0] * num_priors)
        assert result.max_overlaps.tolist() == pytest.approx(expected_max, abs=1e-6)
        expected_labels = [10 + k - 1 if k > 0 else -1 for k in expected]
        assert result.labels.tolist() == expected_labels


def test_assigner_ignore_hand_computed():
    gts = torch.tensor([[0., 0., 10., 10.]])
    priors = torch.tensor([[0., 0., 10., 10.], [20., 20., 30., 30.], [22., 22., 28., 28.]])
    ignored = InstanceData(bboxes=torch.tensor([[20., 20., 30., 30.]]), labels=torch.zeros(1))
    assigner = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.5, ignore_iof_thr=0.5)
    result = assigner.assign(InstanceData(priors=priors), instances(gts, torch.tensor([3])),
                             ignored)
    assert result.gt_inds.tolist() == [1, -1, -1]
    assert result.labels.tolist() == [3, -1, -1]
    # ignore_iof_thr <= 0 switches ignoring off
    off = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.5, ignore_iof_thr=-1)
    result = off.assign(InstanceData(priors=priors), instances(gts, torch.tensor([3])), ignored)
    assert result.gt_inds.tolist() == [1, 0, 0]


def test_assigner_no_gt_and_no_priors():
    assigner = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4)
    priors = torch.tensor([[0., 0., 10., 10.], [5., 5., 8., 8.]])
    result = assigner.assign(InstanceData(priors=priors),
                             InstanceData(bboxes=torch.zeros(0, 4),
                                          labels=torch.zeros(0, dtype=torch.long)))
    assert result.gt_inds.tolist() == [0, 0]
    assert result.labels.tolist() == [-1, -1]
    assert result.max_overlaps.tolist() == [0., 0.]
    result = assigner.assign(InstanceData(priors=torch.zeros(0, 4)),
                             instances(torch.tensor([[0., 0., 4., 4.]])))
    assert result.gt_inds.shape == (0,) and result.labels.shape == (0,)
    assert result.num_gts == 1


def test_assigner_from_registry_and_add_gt():
    assigner = TASK_UTILS.build(dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3,
                                     min_pos_iou=0.3, match_low_quality=True,
                                     ignore_iof_thr=-1))
    gts = torch.tensor([[0., 0., 10., 10.], [20., 0., 30., 10.]])
    priors = torch.tensor([[0., 0., 10., 12.], [21., 0., 30., 10.], [50., 50., 60., 60.]])
    result = assigner.assign(InstanceData(priors=priors), instances(gts, torch.tensor([4, 2])))
    assert result.gt_inds.tolist() == [1, 2, 0]
    result.add_gt_(torch.tensor([4, 2]))
    assert result.gt_inds.tolist() == [1, 2, 1, 2, 0]
    assert result.labels.tolist() == [4, 2, 4, 2, -1]
    assert result.max_overlaps[:2].tolist() == [1., 1.]
    with pytest.raises(ValueError, match='BboxOverlaps2D'):
        MaxIoUAssigner(0.5, 0.5, iou_calculator=dict(type='BboxOverlaps3D'))
