"""sample_pos_neg / RandomSampler: counts, no duplicates, index classes, neg_pos_ub, gt boxes as
proposals, and (seeded) uniformity."""
from __future__ import annotations

import pytest
import torch
from mmengine.structures import InstanceData

from rcnn_det.models.task_modules import AssignResult, RandomSampler, sample_pos_neg
from rcnn_det.registry import TASK_UTILS


def assignment(num_pos: int, num_neg: int, num_ignored: int, seed: int = 0) -> torch.Tensor:
    """A shuffled (N,) gt_inds with the given numbers of positives (k > 0), negatives, ignored."""
    g = torch.Generator().manual_seed(seed)
    values = torch.cat([torch.randint(1, 4, (num_pos,), generator=g),
                        torch.zeros(num_neg, dtype=torch.long),
                        torch.full((num_ignored,), -1, dtype=torch.long)])
    return values[torch.randperm(values.numel(), generator=g)]


def check_classes(gt_inds, pos, neg):
    assert pos.unique().numel() == pos.numel() and neg.unique().numel() == neg.numel()
    assert (gt_inds[pos] > 0).all() and (gt_inds[neg] == 0).all()
    assert pos.dtype == torch.long and neg.dtype == torch.long


@pytest.mark.parametrize('num_pos, num_neg, expected_pos, expected_neg', [
    (10, 100, 5, 15),    # enough of both: num * pos_fraction positives, total num
    (2, 100, 2, 18),     # few positives: all of them, negatives fill up to num
    (10, 3, 5, 3),       # few negatives: fewer than num in all
    (0, 100, 0, 20),     # no positives
    (0, 0, 0, 0)])
def test_counts_and_classes(num_pos, num_neg, expected_pos, expected_neg):
    gt_inds = assignment(num_pos, num_neg, num_ignored=7)
    g = torch.Generator().manual_seed(1)
    pos, neg = sample_pos_neg(gt_inds, num=20, pos_fraction=0.25, generator=g)
    assert (pos.numel(), neg.numel()) == (expected_pos, expected_neg)
    check_classes(gt_inds, pos, neg)


def test_all_candidates_kept_when_fewer_than_requested():
    gt_inds = assignment(3, 4, 5)
    pos, neg = sample_pos_neg(gt_inds, num=100, pos_fraction=0.5)
    assert sorted(pos.tolist()) == (gt_inds > 0).nonzero().squeeze(1).tolist()
    assert sorted(neg.tolist()) == (gt_inds == 0).nonzero().squeeze(1).tolist()


@pytest.mark.parametrize('num_pos, ub, expected_neg', [(2, 3, 6), (0, 3, 3), (4, 0, 0),
                                                       (4, 100, 16), (2, 1.5, 3)])
def test_neg_pos_ub(num_pos, ub, expected_neg):
    gt_inds = assignment(num_pos, 50, 0)
    pos, neg = sample_pos_neg(gt_inds, num=20, pos_fraction=0.5, neg_pos_ub=ub)
    assert pos.numel() == num_pos and neg.numel() == expected_neg
    check_classes(gt_inds, pos, neg)


def test_generator_makes_it_reproducible():
    gt_inds = assignment(30, 300, 10)
    a = sample_pos_neg(gt_inds, 64, 0.25, generator=torch.Generator().manual_seed(5))
    b = sample_pos_neg(gt_inds, 64, 0.25, generator=torch.Generator().manual_seed(5))
    c = sample_pos_neg(gt_inds, 64, 0.25, generator=torch.Generator().manual_seed(6))
    assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()
    assert a[0].tolist() != c[0].tolist()


def test_roughly_uniform():
    # 5 of 20 negatives and 2 of 8 positives per draw; every candidate should be drawn about
    # equally often (expected 500 and 500 of 2000 draws; binomial sd ~ 19).
    gt_inds = torch.cat([torch.zeros(20, dtype=torch.long), torch.ones(8, dtype=torch.long)])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(28)
    for _ in range(2000):
        pos, neg = sample_pos_neg(gt_inds, num=7, pos_fraction=2 / 7, generator=g)
        counts[pos] += 1
        counts[neg] += 1
    assert counts[:20].min() > 420 and counts[:20].max() < 580, counts[:20]
    assert counts[20:].min() > 420 and counts[20:].max() < 580, counts[20:]


def make_assign(gt_inds: torch.Tensor, gt_labels: torch.Tensor) -> AssignResult:
    labels = torch.full_like(gt_inds, -1)
    labels[gt_inds > 0] = gt_labels[gt_inds[gt_inds > 0] - 1]
    return AssignResult(len(gt_labels), gt_inds.clone(), torch.zeros(len(gt_inds)), labels)


def test_sampler_add_gt_as_proposals_prepends_gt_boxes():
    gts = torch.tensor([[0., 0., 10., 10.], [20., 20., 40., 40.]])
    gt_labels = torch.tensor([7, 3])
    priors = torch.tensor([[1., 1., 10., 10.], [50., 50., 60., 60.], [21., 20., 40., 40.],
                           [0., 30., 5., 35.]])
    gt_inds = torch.tensor([1, 0, 2, -1])
    assign = make_assign(gt_inds, gt_labels)
    sampler = RandomSampler(num=10, pos_fraction=0.5, add_gt_as_proposals=True)
    res = sampler.sample(assign, InstanceData(priors=priors), InstanceData(bboxes=gts,
                                                                           labels=gt_labels))
    # priors seen by the sampler: [gt0, gt1, p0, p1, p2, p3]; positives 0, 1, 2, 4; negative 3
    assert sorted(res.pos_inds.tolist()) == [0, 1, 2, 4]
    assert res.neg_inds.tolist() == [3]
    order = res.pos_inds.argsort()
    assert res.pos_is_gt[order].tolist() == [True, True, False, False]
    assert res.pos_assigned_gt_inds[order].tolist() == [0, 1, 0, 1]
    assert res.pos_gt_labels[order].tolist() == [7, 3, 7, 3]
    torch.testing.assert_close(res.pos_gt_bboxes[order], gts[[0, 1, 0, 1]])
    all_priors = torch.cat([gts, priors])
    torch.testing.assert_close(res.pos_priors, all_priors[res.pos_inds])
    torch.testing.assert_close(res.neg_priors, priors[[1]])
    # the assign result was extended in place, as mmdet does
    assert assign.gt_inds.tolist() == [1, 2, 1, 0, 2, -1]
    assert res.num_gts == 2
    # SamplingResult.priors orders positives first
    torch.testing.assert_close(res.priors, torch.cat([res.pos_priors, res.neg_priors]))


def test_sampler_without_gt_as_proposals_and_without_gts():
    priors = torch.tensor([[0., 0., 4., 4.], [5., 5., 9., 9.], [1., 1., 2., 2.]])
    sampler = TASK_UTILS.build(dict(type='RandomSampler', num=256, pos_fraction=0.5,
                                    neg_pos_ub=-1, add_gt_as_proposals=False))
    gts = InstanceData(bboxes=torch.tensor([[0., 0., 4., 4.]]), labels=torch.tensor([0]))
    res = sampler.sample(make_assign(torch.tensor([1, 0, -1]), gts.labels),
                         InstanceData(priors=priors), gts)
    assert res.pos_inds.tolist() == [0] and res.neg_inds.tolist() == [1]
    assert res.pos_is_gt.tolist() == [False]
    empty = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    sampler = RandomSampler(num=2, pos_fraction=0.5, add_gt_as_proposals=True)
    res = sampler.sample(make_assign(torch.zeros(3, dtype=torch.long), empty.labels),
                         InstanceData(bboxes=priors), empty)
    assert res.pos_inds.numel() == 0 and res.neg_inds.numel() == 2
    assert res.pos_gt_bboxes.shape == (0, 4) and res.pos_priors.shape == (0, 4)
    assert set(res.neg_inds.tolist()) <= {0, 1, 2}
