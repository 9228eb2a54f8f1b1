"""FocalLoss against a per-element scalar formula and torchvision; mmdet's label/one-hot/soft
target paths, weight shapes, avg_factor, reductions, activated inputs and alpha < 0."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from rcnn_det.models.losses import FocalLoss, sigmoid_focal_loss
from rcnn_det.registry import MODELS

EPS = torch.finfo(torch.float32).eps


def focal_scalar(x: float, t: float, gamma: float, alpha: float, activated: bool = False) -> float:
    """One element, from the definition: p = sigmoid(x); BCE = -(t log p + (1-t) log(1-p));
    weight = (alpha t + (1-alpha)(1-t)) * ((1-p) t + p (1-t))^gamma."""
    p = x if activated else 1.0 / (1.0 + math.exp(-x))
    bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    modulator = ((1 - p) * t + p * (1 - t)) ** gamma
    return (alpha * t + (1 - alpha) * (1 - t)) * modulator * bce


def brute_force(pred: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float,
                activated: bool = False) -> torch.Tensor:
    rows = [[focal_scalar(x, t, gamma, alpha, activated) for x, t in zip(pr, tr)]
            for pr, tr in zip(pred.tolist(), target.tolist())]
    return torch.tensor(rows, dtype=torch.float64)


def logits(n: int, c: int, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, c, generator=g)).requires_grad_()


LABELS = torch.tensor([0, 3, 1, 4, 2, 4, 3])        # C = 4: label 4 is background
NUM_CLASSES = 4


def one_hot(labels: torch.Tensor, c: int) -> torch.Tensor:
    t = torch.zeros(len(labels), c)
    for i, lab in enumerate(labels.tolist()):
        if lab < c:
            t[i, lab] = 1.0
    return t


@pytest.mark.parametrize('gamma,alpha', [(2.0, 0.25), (0.0, 0.5), (1.5, 0.75), (0.0, -1.0),
                                         (2.0, -1.0)])
def test_elementwise_matches_scalar_formula(gamma, alpha):
    pred = logits(7, NUM_CLASSES)
    target = one_hot(LABELS, NUM_CLASSES)
    loss = FocalLoss(gamma=gamma, alpha=alpha, reduction='none')(pred, LABELS)
    assert loss.shape == (7, NUM_CLASSES)
    torch.testing.assert_close(loss.double(), brute_force(pred, target, gamma, alpha),
                               rtol=1e-5, atol=1e-6)


def test_hand_values_of_single_elements():
    # x = 0: p = 0.5, BCE = log 2 for either target; (0.5)^2 modulator.
    pred = torch.zeros(1, 2)
    loss = FocalLoss(reduction='none')(pred, torch.tensor([1]))
    expected = [0.75 * 0.25 * math.log(2), 0.25 * 0.25 * math.log(2)]  # negative, positive
    assert loss[0].tolist() == pytest.approx(expected, rel=1e-6)
    # gamma = 0, alpha = 0.5 is half the plain BCE
    x = torch.tensor([[1.3, -0.7]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, torch.tensor([[1., 0.]]),
                                                               reduction='none')
    half = FocalLoss(gamma=0., alpha=0.5, reduction='none')(x, torch.tensor([0]))
    torch.testing.assert_close(half, 0.5 * bce)


@pytest.mark.parametrize('gamma,alpha', [(2.0, 0.25), (0.0, 0.5), (3.0, 0.9)])
def test_matches_torchvision_for_non_negative_alpha(gamma, alpha):
    pred = logits(7, NUM_CLASSES, seed=1)
    target = one_hot(LABELS, NUM_CLASSES)
    expected = tv_sigmoid_focal_loss(pred, target, alpha=alpha, gamma=gamma, reduction='none')
    torch.testing.assert_close(FocalLoss(gamma=gamma, alpha=alpha)(pred, LABELS,
                                                                  reduction_override='none'),
                               expected)
    # soft targets too: both are the same formula for t in [0, 1]
    soft = torch.rand(7, NUM_CLASSES, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(FocalLoss(gamma=gamma, alpha=alpha)(pred, soft,
                                                                  reduction_override='none'),
                               tv_sigmoid_focal_loss(pred, soft, alpha=alpha, gamma=gamma))


def test_negative_alpha_is_applied_as_mmdet_not_skipped_as_torchvision():
    pred = logits(7, NUM_CLASSES, seed=2)
    target = one_hot(LABELS, NUM_CLASSES)
    ours = FocalLoss(alpha=-1.0, reduction='none')(pred, LABELS)
    unweighted = tv_sigmoid_focal_loss(pred, target, alpha=-1.0, reduction='none')
    # mmdet: positives times alpha = -1, negatives times 1 - alpha = 2
    torch.testing.assert_close(ours, unweighted * torch.where(target > 0, -1.0, 2.0))


def test_labels_equal_one_hot_float_targets_and_background_row():
    pred = logits(7, NUM_CLASSES, seed=3)
    crit = FocalLoss(reduction='none')
    from_labels = crit(pred, LABELS)
    from_one_hot = crit(pred, one_hot(LABELS, NUM_CLASSES))
    torch.testing.assert_close(from_labels, from_one_hot)
    # label C (background): every column is a negative, (1 - alpha) p^gamma (-log(1 - p))
    p = pred.detach()[3].sigmoid()
    torch.testing.assert_close(from_labels[3], 0.75 * p ** 2 * -torch.log1p(-p))
    # a foreground row has exactly one positive column
    assert from_labels[1].tolist() == pytest.approx(
        [focal_scalar(x, float(c == 3), 2.0, 0.25) for c, x in enumerate(pred[1].tolist())],
        rel=1e-5)
    # int32 labels work the same
    torch.testing.assert_close(crit(pred, LABELS.int()), from_labels)


def test_soft_targets_follow_the_float_formula():
    pred = logits(5, 3, seed=4)
    target = torch.tensor([[0.3, 0., 0.], [0., 0.9, 0.], [0., 0., 0.], [0.5, 0.5, 0.],
                           [1., 0., 0.2]])
    loss = FocalLoss(gamma=2.0, alpha=0.25, reduction='none')(pred, target)
    torch.testing.assert_close(loss.double(), brute_force(pred, target, 2.0, 0.25),
                               rtol=1e-5, atol=1e-6)


def test_weights_avg_factor_reductions_and_loss_weight():
    pred = logits(7, NUM_CLASSES, seed=6)
    elem = brute_force(pred, one_hot(LABELS, NUM_CLASSES), 2.0, 0.25).float()
    w_row = torch.tensor([1., 0., 2., 1., 0.5, 0., 1.])
    w_full = torch.rand(7, NUM_CLASSES, generator=torch.Generator().manual_seed(7))
    crit = FocalLoss()
    torch.testing.assert_close(crit(pred, LABELS), elem.mean())
    torch.testing.assert_close(crit(pred, LABELS, reduction_override='sum'), elem.sum())
    torch.testing.assert_close(FocalLoss(reduction='sum')(pred, LABELS), elem.sum())
    # (N,) broadcasts over classes and equals the explicit (N, C) expansion
    torch.testing.assert_close(crit(pred, LABELS, w_row), (elem * w_row[:, None]).mean())
    torch.testing.assert_close(crit(pred, LABELS, w_row),
                               crit(pred, LABELS, w_row[:, None].expand(7, NUM_CLASSES)))
    torch.testing.assert_close(crit(pred, LABELS, w_full), (elem * w_full).mean())
    # flattened (N * C,) weights are viewed as (N, C), as mmdet (FSAF)
    torch.testing.assert_close(crit(pred, LABELS, w_full.flatten()), (elem * w_full).mean())
    # avg_factor: sum / (avg_factor + eps), times loss_weight
    torch.testing.assert_close(FocalLoss(loss_weight=2.0)(pred, LABELS, w_row, avg_factor=5),
                               2.0 * (elem * w_row[:, None]).sum() / (5 + EPS))
    torch.testing.assert_close(crit(pred, LABELS, avg_factor=torch.tensor(3.0)),
                               elem.sum() / (3.0 + EPS))
    with pytest.raises(ValueError, match='avg_factor'):
        FocalLoss(reduction='sum')(pred, LABELS, avg_factor=2.0)
    with pytest.raises(ValueError):
        crit(pred, LABELS, torch.ones(5))
    with pytest.raises(ValueError):
        crit(pred, LABELS, reduction_override='avg')


def test_activated_probabilities_equal_logit_path():
    pred = logits(7, NUM_CLASSES, seed=8)
    prob = pred.detach().sigmoid().requires_grad_()
    from_logits = FocalLoss(reduction='none')(pred, LABELS)
    from_prob = FocalLoss(activated=True, reduction='none')(prob, LABELS)
    torch.testing.assert_close(from_prob, from_logits, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(from_prob.double(),
                               brute_force(prob, one_hot(LABELS, NUM_CLASSES), 2.0, 0.25,
                                           activated=True), rtol=1e-5, atol=1e-6)
    soft = torch.rand(7, NUM_CLASSES, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(FocalLoss(activated=True)(prob, soft), FocalLoss()(pred, soft),
                               rtol=1e-4, atol=1e-6)
    from_prob.sum().backward()
    assert torch.isfinite(prob.grad).all() and prob.grad.abs().sum() > 0
    # near-certain probabilities, and F.binary_cross_entropy's log clamp at -100 (as mmdet):
    # a positive predicted with p = 0 costs alpha * 1^gamma * 100 = 25
    extreme = torch.tensor([[0.999, 1e-4], [0.0, 0.5]])
    loss = FocalLoss(activated=True, reduction='none')(extreme, torch.tensor([1, 0]))
    assert loss[0].tolist() == pytest.approx([focal_scalar(0.999, 0., 2., .25, True),
                                              focal_scalar(1e-4, 1., 2., .25, True)], rel=1e-4)
    assert loss[1].tolist() == pytest.approx([25.0, focal_scalar(0.5, 0., 2., .25, True)],
                                             rel=1e-5)


def test_gradients_finite_and_match_torchvision():
    pred = logits(7, NUM_CLASSES, seed=10, scale=20.0)          # saturated logits too
    FocalLoss()(pred, LABELS, avg_factor=3).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    ref = pred.detach().clone().requires_grad_()
    (tv_sigmoid_focal_loss(ref, one_hot(LABELS, NUM_CLASSES), reduction='sum')
     / (3 + EPS)).backward()
    torch.testing.assert_close(pred.grad, ref.grad)
    zero_gamma = logits(4, 3, seed=11)
    FocalLoss(gamma=0.0)(zero_gamma, torch.tensor([0, 3, 2, 1])).backward()
    assert torch.isfinite(zero_gamma.grad).all()


def test_empty_input_gives_zero_that_keeps_grad():
    pred = torch.zeros(0, NUM_CLASSES, requires_grad=True)
    loss = FocalLoss()(pred, torch.zeros(0, dtype=torch.long), torch.zeros(0), avg_factor=0)
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert pred.grad.shape == (0, NUM_CLASSES)


def test_use_sigmoid_false_is_rejected_and_registry_builds():
    with pytest.raises(NotImplementedError, match='sigmoid'):
        FocalLoss(use_sigmoid=False)
    crit = MODELS.build(dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                             loss_weight=1.0))
    assert isinstance(crit, FocalLoss) and crit.gamma == 2.0 and crit.alpha == 0.25
    assert sigmoid_focal_loss(torch.zeros(1, 1), torch.ones(1, 1)).item() == pytest.approx(
        0.25 * 0.25 * math.log(2))
