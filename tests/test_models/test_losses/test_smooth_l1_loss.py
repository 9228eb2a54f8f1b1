"""L1Loss and SmoothL1Loss against the hand formula; weights, avg_factor, empty targets."""
from __future__ import annotations

import pytest
import torch

from rcnn_det.models.losses import L1Loss, SmoothL1Loss, smooth_l1_loss
from rcnn_det.registry import MODELS

EPS = torch.finfo(torch.float32).eps


def huber(d: float, beta: float) -> float:
    d = abs(d)
    return 0.5 * d * d / beta if d < beta else d - 0.5 * beta


def test_smooth_l1_elementwise_hand_formula():
    pred = torch.tensor([0., 0.5, -2., 3., 1.])
    target = torch.tensor([0., 0., 0., 1., 1.9])
    for beta in (1.0, 0.5, 1 / 9):
        expected = [huber(p - t, beta) for p, t in zip(pred.tolist(), target.tolist())]
        assert smooth_l1_loss(pred, target, beta).tolist() == pytest.approx(expected, abs=1e-6)
    # d = 0.5 with beta 1: 0.125; d = 2: 1.5; d = 2 (3 vs 1): 1.5; d = 0.9: 0.405
    assert smooth_l1_loss(pred, target).tolist() == pytest.approx([0, 0.125, 1.5, 1.5, 0.405],
                                                                  abs=1e-6)


def test_smooth_l1_module_reductions_and_weights():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(6, 4, generator=g).requires_grad_()
    target = torch.randn(6, 4, generator=g)
    weight = (torch.rand(6, 4, generator=g) > 0.5).float()
    elem = smooth_l1_loss(pred, target, 1.0)
    torch.testing.assert_close(SmoothL1Loss()(pred, target), elem.mean())
    torch.testing.assert_close(SmoothL1Loss(reduction='sum')(pred, target), elem.sum())
    torch.testing.assert_close(SmoothL1Loss(loss_weight=2.)(pred, target, weight, avg_factor=5),
                               2 * (elem * weight).sum() / (5 + EPS))
    torch.testing.assert_close(SmoothL1Loss(beta=0.5)(pred, target, reduction_override='none'),
                               smooth_l1_loss(pred, target, 0.5))


def test_l1_loss_hand_and_weights():
    pred = torch.tensor([[1., 2., 3., 4.], [0., 0., 0., 0.]], requires_grad=True)
    target = torch.tensor([[1.5, 2., 1., 4.], [1., -1., 0., 2.]])
    # |d| = [0.5, 0, 2, 0], [1, 1, 0, 2] -> sum 6.5
    assert L1Loss()(pred, target).item() == pytest.approx(6.5 / 8)
    assert L1Loss(reduction='sum')(pred, target).item() == pytest.approx(6.5)
    weight = torch.tensor([[1., 1., 1., 1.], [0., 0., 0., 0.]])
    loss = L1Loss(loss_weight=3.)(pred, target, weight, avg_factor=2)
    assert loss.item() == pytest.approx(3 * 2.5 / 2, rel=1e-6)
    loss.backward()
    assert pred.grad[1].abs().sum() == 0
    assert pred.grad[0].tolist() == pytest.approx([-1.5, 0., 1.5, 0.])   # 3 * sign / 2


@pytest.mark.parametrize('loss_cls', [L1Loss, SmoothL1Loss])
def test_empty_targets_give_zero_that_keeps_grad(loss_cls):
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = loss_cls()(pred, torch.zeros(0, 4), torch.zeros(0, 4), avg_factor=0)
    assert loss.item() == 0 and not torch.isnan(loss)
    assert loss.requires_grad and loss.grad_fn is not None
    loss.backward()
    assert pred.grad.shape == (0, 4)


def test_registry_builds_both():
    assert isinstance(MODELS.build(dict(type='L1Loss', loss_weight=1.0)), L1Loss)
    smooth = MODELS.build(dict(type='SmoothL1Loss', beta=1 / 9, loss_weight=1.0))
    assert isinstance(smooth, SmoothL1Loss) and smooth.beta == pytest.approx(1 / 9)
