"""ATSSAssigner / atss_assign against a plain-Python port of mmdetection 3.x
ATSSAssigner.assign (loops over ground truths, levels and priors), on random multi-level problems
with half-integer coordinates (so that distance ties, duplicate boxes and IoU ties happen)."""
from __future__ import annotations

import math
import random

import pytest
import torch
from mmengine.structures import InstanceData

from rcnn_det.models.task_modules import ATSSAssigner, BboxOverlaps2D, atss_assign
from rcnn_det.models.task_modules.assigners.atss_assigner import nearest_k
from rcnn_det.registry import TASK_UTILS

NEG_INF = -100000000.0   # mmdet's max_overlaps of a prior that is not positive


class Ambiguous(Exception):
    """A decision lies within rounding of its threshold: float32 and float64 may disagree."""


def iou(a, b, mode='iou'):
    """torchvision box_iou's arithmetic on Python floats (a = prior, b = box)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    union = area_a if mode == 'iof' else area_a + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def ref_atss(priors, gts, levels, topk, ignore=(), ignore_iof_thr=-1.0, tol=0.0,
             higher_index_wins_ties=False):
    """mmdet 3.x ATSSAssigner.assign, one element at a time; boxes are lists of 4 floats.

    Distance ties at a level's k-th place go to the lower prior index (the rcnn_det decision;
    ``higher_index_wins_ties`` flips it, to show that the random cases depend on it). Raises
    Ambiguous when some comparison is closer than ``tol`` to its threshold.
    Returns gt_inds (1-based, 0 background, -1 ignored) and max_overlaps.
    """
    num_priors, num_gts = len(priors), len(gts)
    if num_gts == 0 or num_priors == 0:
        return [0] * num_priors, [0.0] * num_priors
    gt_inds = [0] * num_priors
    ignored = [False] * num_priors
    if ignore_iof_thr > 0 and ignore:
        for n in range(num_priors):
            if max(iou(priors[n], box, 'iof') for box in ignore) > ignore_iof_thr:
                ignored[n] = True
                gt_inds[n] = -1
    ctr = [((p[0] + p[2]) / 2.0, (p[1] + p[3]) / 2.0) for p in priors]
    positive = [[] for _ in range(num_priors)]          # (iou, gt index) pairs per prior
    for g, box in enumerate(gts):
        gx, gy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
        dist = [1e8 if ignored[n] else math.sqrt((ctr[n][0] - gx) ** 2 + (ctr[n][1] - gy) ** 2)
                for n in range(num_priors)]
        candidates, start = [], 0
        for num in levels:
            k = min(topk, num)
            tie = (lambda n: -n) if higher_index_wins_ties else (lambda n: n)
            order = sorted(range(start, start + num), key=lambda n: (dist[n], tie(n)))
            if tol and 0 < k < num and 0 < abs(dist[order[k]] - dist[order[k - 1]]) <= tol:
                raise Ambiguous
            candidates += order[:k]
            start += num
        values = [iou(priors[n], box) for n in candidates]
        mean = sum(values) / len(values)
        if len(values) > 1:
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        else:
            std = math.nan                                # torch.std of one value
        thr = mean + std
        for n, v in zip(candidates, values):
            if abs(v - thr) <= max(tol, 1e-12) * max(1.0, abs(thr)):
                raise Ambiguous
            margin = min(ctr[n][0] - box[0], ctr[n][1] - box[1],
                         box[2] - ctr[n][0], box[3] - ctr[n][1])
            if tol and abs(margin - 0.01) <= tol * 100:
                raise Ambiguous
            if v >= thr and margin > 0.01:
                positive[n].append((v, g))
    max_overlaps = [NEG_INF] * num_priors
    for n in range(num_priors):
        for v, g in positive[n]:                          # ground truths in index order
            if v > max_overlaps[n]:                       # strict: the lower index keeps a tie
                if tol and abs(v - max_overlaps[n]) <= tol:
                    raise Ambiguous
                max_overlaps[n], gt_inds[n] = v, g + 1
    return gt_inds, max_overlaps


def half(rng: random.Random, lo: float, hi: float) -> float:
    return rng.randint(int(2 * lo), int(2 * hi)) / 2


def random_problem(rng: random.Random):
    """Priors on 1 to 4 levels (grid anchors with centres on multiples of the stride, some
    levels with fewer priors than topk or none, some jittered) and 0 to 7 ground truths (tiny,
    large, on the image border, overlapping, duplicated)."""
    size = 64.0
    priors, levels = [], []
    for stride in rng.sample([4, 8, 16, 32, 64, 128], rng.randint(1, 4)):
        cells = max(int(size // stride), 1)
        scales = rng.sample([2, 4, 8], rng.randint(1, 2))
        level = []
        for y in range(cells):
            for x in range(cells):
                for s in scales:
                    side = stride * s / 2
                    level.append([x * stride - side / 2, y * stride - side / 2,
                                  x * stride + side / 2, y * stride + side / 2])
        if rng.random() < 0.3:                            # irregular priors (e.g. proposals)
            level = [[v + half(rng, -2, 2) for v in box] for box in level]
        if rng.random() < 0.15:
            level = level[:rng.randint(0, 3)]             # a level with fewer priors than topk
        priors += level
        levels.append(len(level))
    gts = []
    for _ in range(rng.randint(0, 7)):
        kind = rng.random()
        if gts and kind < 0.15:
            gts.append(list(rng.choice(gts)))             # duplicate: ties between gts
            continue
        w = half(rng, 0.5, 3) if kind < 0.35 else half(rng, 4, 48)
        h = half(rng, 0.5, 3) if kind < 0.35 else half(rng, 4, 48)
        x1, y1 = half(rng, 0, size - w), half(rng, 0, size - h)
        if rng.random() < 0.2:
            x1 = rng.choice([0.0, size - w])              # on the image border
        gts.append([x1, y1, x1 + w, y1 + h])
    ignore = [[half(rng, 0, 48), half(rng, 0, 48)] for _ in range(rng.randint(0, 2))]
    ignore = [[x, y, x + half(rng, 2, 24), y + half(rng, 2, 24)] for x, y in ignore]
    topk = rng.choice([1, 2, 3, 5, 9, 9, 20])
    return priors, levels, gts, ignore, topk


def run_assigner(priors, levels, gts, ignore, topk, ignore_iof_thr, dtype, labels=None):
    labels = list(range(100, 100 + len(gts))) if labels is None else labels
    assigner = ATSSAssigner(topk=topk, ignore_iof_thr=ignore_iof_thr)
    gt = InstanceData(bboxes=torch.tensor(gts, dtype=dtype).reshape(-1, 4),
                      labels=torch.tensor(labels, dtype=torch.long))
    gt_ignore = InstanceData(bboxes=torch.tensor(ignore, dtype=dtype).reshape(-1, 4))
    pred = InstanceData(priors=torch.tensor(priors, dtype=dtype).reshape(-1, 4))
    return assigner.assign(pred, levels, gt, gt_ignore)


def test_atss_matches_loop_reference_on_random_problems():
    rng = random.Random(0)
    checked = float32_checked = positives = contested = small_levels = nan_thr = 0
    ignored_total = tie_sensitive = 0
    for case in range(260):
        priors, levels, gts, ignore, topk = random_problem(rng)
        ignore_iof_thr = rng.choice([-1.0, 0.5, 0.8])
        try:
            expected, expected_max = ref_atss(priors, gts, levels, topk, ignore, ignore_iof_thr)
        except Ambiguous:
            continue
        checked += 1
        got = run_assigner(priors, levels, gts, ignore, topk, ignore_iof_thr, torch.float64)
        assert got.gt_inds.dtype == torch.long and got.num_gts == len(gts)
        assert got.gt_inds.tolist() == expected, (case, topk, levels, gts, ignore)
        assert got.max_overlaps.dtype == torch.float64
        assert got.max_overlaps.tolist() == pytest.approx(expected_max, rel=1e-12), case
        assert got.labels.tolist() == [100 + k - 1 if k > 0 else -1 for k in expected]
        # the same problem in float32, unless some decision is within float32 rounding
        try:
            ref_atss(priors, gts, levels, topk, ignore, ignore_iof_thr, tol=1e-5)
            got32 = run_assigner(priors, levels, gts, ignore, topk, ignore_iof_thr,
                                 torch.float32)
            assert got32.gt_inds.tolist() == expected, case
            assert got32.max_overlaps.tolist() == pytest.approx(expected_max, rel=1e-5)
            float32_checked += 1
        except Ambiguous:
            pass
        positives += sum(k > 0 for k in expected)
        ignored_total += sum(k == -1 for k in expected)
        small_levels += any(num < topk for num in levels)
        nan_thr += len(gts) > 0 and sum(min(topk, num) for num in levels) == 1
        if len(gts) > 1 and priors:
            ious = [[iou(p, g) for g in gts] for p in priors]
            contested += sum(sum(v > 0.3 for v in row) > 1 for row in ious)
        try:
            flipped, _ = ref_atss(priors, gts, levels, topk, ignore, ignore_iof_thr,
                                  higher_index_wins_ties=True)
            tie_sensitive += flipped != expected
        except Ambiguous:
            pass
    # the cases are not vacuous: most are decided, with positives, ignored priors, priors that
    # several gts overlap, levels smaller than topk, a NaN threshold (one candidate), and
    # distance ties whose order changes the result
    assert checked > 200 and float32_checked > 150, (checked, float32_checked)
    assert positives > 500 and ignored_total > 100, (positives, ignored_total)
    assert contested > 100 and small_levels > 50 and nan_thr > 0, (contested, small_levels,
                                                                    nan_thr)
    assert tie_sensitive > 5, tie_sensitive


def test_nearest_k_breaks_distance_ties_by_lower_index():
    gen = torch.Generator().manual_seed(0)
    for k in (1, 3, 9, 40):
        dist = torch.randint(0, 6, (20, 40), generator=gen).double()
        expected = dist.sort(dim=1, stable=True).indices[:, :k]
        assert torch.equal(nearest_k(dist, k), expected), k
    dist = torch.rand(7, 500, generator=gen)
    assert torch.equal(nearest_k(dist, 9), dist.sort(dim=1, stable=True).indices[:, :9])


SQUARES = [[0., 0., 10., 10.], [10., 0., 20., 10.], [20., 0., 30., 10.], [0., 10., 10., 20.]]


def test_hand_computed():
    # gt centre (6, 5); prior centres (5,5) (15,5) (25,5) (5,15): distances 1, 9, 19, 10.05.
    # topk 3 -> priors 0, 1, 3 with IoU 100/120, 20/200, 0: mean 0.3111, std 0.4550,
    # threshold 0.7661 -> only prior 0 (centre inside the gt) is positive.
    gt = InstanceData(bboxes=torch.tensor([[0., 0., 12., 10.]]), labels=torch.tensor([7]))
    pred = InstanceData(priors=torch.tensor(SQUARES))
    result = ATSSAssigner(topk=3).assign(pred, [4], gt)
    assert result.gt_inds.tolist() == [1, 0, 0, 0]
    assert result.labels.tolist() == [7, -1, -1, -1]
    assert result.max_overlaps.tolist() == pytest.approx([100 / 120] + [NEG_INF] * 3)
    # a duplicate gt of another class: equal IoUs, the lower gt index wins
    gts = InstanceData(bboxes=torch.tensor([[0., 0., 12., 10.]] * 2), labels=torch.tensor([7, 3]))
    result = ATSSAssigner(topk=3).assign(pred, [4], gts)
    assert result.gt_inds.tolist() == [1, 0, 0, 0] and result.labels.tolist() == [7, -1, -1, -1]
    # two levels, topk 2 > the second level's single prior: candidates {0, 1} and {3};
    # IoUs 0.8333, 0.1, 0: the same threshold arithmetic -> prior 0 positive
    result = ATSSAssigner(topk=2).assign(pred, [3, 1], gt)
    assert result.gt_inds.tolist() == [1, 0, 0, 0]


def test_iou_equal_to_threshold_is_positive():
    # four priors of area 32 containing the gt [0, 0, 4, 4], centres 1 px from the gt centre:
    # IoU exactly 0.5 each, mean 0.5, std 0 -> threshold 0.5, and IoU >= threshold passes
    priors = torch.tensor([[-3., 0., 5., 4.], [-1., 0., 7., 4.], [0., -3., 4., 5.],
                           [0., -1., 4., 7.], [20., 20., 28., 24.]])
    gt = InstanceData(bboxes=torch.tensor([[0., 0., 4., 4.]]), labels=torch.tensor([2]))
    result = ATSSAssigner(topk=4).assign(InstanceData(priors=priors), [5], gt)
    assert result.gt_inds.tolist() == [1, 1, 1, 1, 0]
    assert result.max_overlaps.tolist() == [0.5] * 4 + [NEG_INF]


@pytest.mark.parametrize('offset, positive', [(0.0, False), (0.005, False), (0.02, True)])
def test_centre_must_be_inside_by_more_than_0_01(offset, positive):
    # IoUs [v, 0, 0] give the threshold 0.911 v < v: only the centre test decides
    near = [-5. + offset, -5. + offset, 5. + offset, 5. + offset]
    pred = InstanceData(priors=torch.tensor([near, [30., 30., 40., 40.], [50., 50., 60., 60.]]))
    gt = InstanceData(bboxes=torch.tensor([[0., 0., 10., 10.]]), labels=torch.tensor([0]))
    result = ATSSAssigner(topk=3).assign(pred, [3], gt)
    assert result.gt_inds.tolist() == [int(positive), 0, 0]


def test_competing_gts_take_the_highest_iou():
    # prior 0 is positive for both gts; IoU with gt 1 (0.8) beats gt 0 (49 / 115)
    priors = torch.tensor([[0., 0., 10., 10.], [40., 40., 50., 50.], [60., 60., 70., 70.]])
    gt = InstanceData(bboxes=torch.tensor([[-1., -1., 7., 7.], [0., 0., 8., 10.]]),
                      labels=torch.tensor([5, 6]))
    result = ATSSAssigner(topk=3).assign(InstanceData(priors=priors), [3], gt)
    assert result.gt_inds.tolist() == [2, 0, 0] and result.labels.tolist() == [6, -1, -1]
    assert result.max_overlaps[0].item() == pytest.approx(0.8)


def test_ignore_boxes():
    gt = InstanceData(bboxes=torch.tensor([[0., 0., 12., 10.]]), labels=torch.tensor([7]))
    pred = InstanceData(priors=torch.tensor(SQUARES))
    ignore = InstanceData(bboxes=torch.tensor([[-1., -1., 9., 9.]]))    # IoF 0.81 with prior 0
    # prior 0 ignored: distance INF -> candidates 1, 3, 2 with IoUs 0.1, 0, 0; prior 1 passes
    # the threshold but its centre (15, 5) is outside the gt -> nothing positive
    result = ATSSAssigner(topk=3, ignore_iof_thr=0.5).assign(pred, [4], gt, ignore)
    assert result.gt_inds.tolist() == [-1, 0, 0, 0]
    assert result.labels.tolist() == [-1, -1, -1, -1]
    assert result.max_overlaps.tolist() == [NEG_INF] * 4
    # topk 4 = every prior: the ignored prior is still a candidate, passes (threshold 0.636)
    # and is positive: mmdet overwrites its -1
    result = ATSSAssigner(topk=4, ignore_iof_thr=0.5).assign(pred, [4], gt, ignore)
    assert result.gt_inds.tolist() == [1, 0, 0, 0]
    # IoF 0.81 is not above 0.9; ignore_iof_thr <= 0 or no ignore boxes: nothing ignored
    for thr, ign in [(0.9, ignore), (-1, ignore), (0.5, None),
                     (0.5, InstanceData(bboxes=torch.zeros(0, 4)))]:
        result = ATSSAssigner(topk=3, ignore_iof_thr=thr).assign(pred, [4], gt, ign)
        assert result.gt_inds.tolist() == [1, 0, 0, 0], (thr, ign)


def test_empty_gts_and_priors():
    priors = InstanceData(priors=torch.tensor(SQUARES, dtype=torch.float64))
    no_gt = InstanceData(bboxes=torch.zeros(0, 4, dtype=torch.float64),
                         labels=torch.zeros(0, dtype=torch.long))
    ignore = InstanceData(bboxes=torch.tensor([[0., 0., 30., 30.]], dtype=torch.float64))
    result = ATSSAssigner(topk=9, ignore_iof_thr=0.5).assign(priors, [2, 2], no_gt, ignore)
    assert result.num_gts == 0 and result.gt_inds.tolist() == [0, 0, 0, 0]
    assert result.gt_inds.dtype == torch.long and result.labels.tolist() == [-1] * 4
    assert result.max_overlaps.tolist() == [0.0] * 4
    assert result.max_overlaps.dtype == torch.float64
    gt = InstanceData(bboxes=torch.tensor([[0., 0., 12., 10.]]), labels=torch.tensor([1]))
    result = ATSSAssigner(topk=9).assign(InstanceData(priors=torch.zeros(0, 4)), [0, 0], gt)
    assert result.num_gts == 1 and result.num_preds == 0
    for tensor in (result.gt_inds, result.max_overlaps, result.labels):
        assert tensor.shape == (0,)
    # a level without priors among others
    result = ATSSAssigner(topk=3).assign(InstanceData(priors=torch.tensor(SQUARES)), [0, 4, 0],
                                         gt)
    assert result.gt_inds.tolist() == [1, 0, 0, 0]
    with pytest.raises(ValueError, match='num_level_priors'):
        ATSSAssigner(topk=3).assign(InstanceData(priors=torch.tensor(SQUARES)), [3], gt)


def test_call_signature_and_registry():
    gt = InstanceData(bboxes=torch.tensor([[0., 0., 12., 10.]]), labels=torch.tensor([7]))
    pred = InstanceData(priors=torch.tensor(SQUARES))
    assigner = TASK_UTILS.build(dict(type='ATSSAssigner', topk=3))
    assert isinstance(assigner, ATSSAssigner) and assigner.topk == 3
    assert isinstance(assigner.iou_calculator, BboxOverlaps2D)
    # mmdet's order, positional or by keyword
    results = [assigner.assign(pred, [4], gt),
               assigner.assign(pred, [4], gt, None),
               assigner.assign(pred_instances=pred, gt_instances=gt, num_level_priors=[4])]
    for result in results:
        assert result.gt_inds.tolist() == [1, 0, 0, 0]
    with pytest.raises(TypeError):
        assigner.assign(pred, gt)
    built = ATSSAssigner(topk=9, iou_calculator=BboxOverlaps2D())
    assert built.assign(pred, [4], gt).gt_inds.tolist() == [1, 0, 0, 0]
    # priors with a trailing column: only the first four are boxes
    pred5 = InstanceData(priors=torch.cat([pred.priors, torch.ones(4, 1)], dim=1))
    assert assigner.assign(pred5, [4], gt).gt_inds.tolist() == [1, 0, 0, 0]


def test_atss_assign_function_matches_class():
    rng = random.Random(3)
    for _ in range(20):
        priors, levels, gts, _, topk = random_problem(rng)
        p = torch.tensor(priors).reshape(-1, 4)
        g = torch.tensor(gts).reshape(-1, 4)
        gt_inds, max_overlaps = atss_assign(BboxOverlaps2D()(g, p), p, g, levels, topk)
        result = run_assigner(priors, levels, gts, [], topk, -1, torch.float32)
        assert torch.equal(gt_inds, result.gt_inds)
        assert torch.equal(max_overlaps, result.max_overlaps)


def test_ddod_alpha_cost():
    gen = torch.Generator().manual_seed(0)
    priors = torch.tensor(SQUARES)
    bboxes = priors + torch.rand(4, 4, generator=gen)
    scores = torch.randn(4, 5, generator=gen)
    gt = InstanceData(bboxes=torch.tensor([[0., 0., 12., 10.], [9., 1., 21., 9.]]),
                      labels=torch.tensor([4, 1]))
    alpha = 0.8
    cost = (scores[:, [4, 1]].sigmoid() ** (1 - alpha)
            * BboxOverlaps2D()(bboxes, gt.bboxes) ** alpha)                 # (N, G)
    expected, expected_max = atss_assign(cost.t(), priors, gt.bboxes, [4], 3)
    pred = InstanceData(priors=priors, bboxes=bboxes, scores=scores)
    result = ATSSAssigner(topk=3, alpha=alpha).assign(pred, [4], gt)
    assert torch.equal(result.gt_inds, expected) and (expected > 0).any()
    assert torch.equal(result.max_overlaps, expected_max)
    with pytest.raises(ValueError, match='scores'):
        ATSSAssigner(topk=3, alpha=alpha).assign(InstanceData(priors=priors), [4], gt)
    with pytest.warns(UserWarning, match='alpha'):
        ATSSAssigner(topk=3).assign(pred, [4], gt)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    rng = random.Random(5)
    for _ in range(30):
        priors, levels, gts, ignore, topk = random_problem(rng)
        cpu = run_assigner(priors, levels, gts, ignore, topk, 0.5, torch.float64)
        assigner = ATSSAssigner(topk=topk, ignore_iof_thr=0.5)
        gt = InstanceData(bboxes=torch.tensor(gts, dtype=torch.float64).reshape(-1, 4).cuda(),
                          labels=torch.arange(100, 100 + len(gts)).cuda())
        ign = InstanceData(bboxes=torch.tensor(ignore, dtype=torch.float64).reshape(-1, 4).cuda())
        pred = InstanceData(priors=torch.tensor(priors, dtype=torch.float64).reshape(-1, 4).cuda())
        gpu = assigner.assign(pred, levels, gt, ign)
        for name in ('gt_inds', 'max_overlaps', 'labels'):
            assert getattr(gpu, name).device.type == 'cuda'
            assert torch.equal(getattr(gpu, name).cpu(), getattr(cpu, name)), name
