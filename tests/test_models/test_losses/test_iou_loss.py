"""IoULoss and GIoULoss against a scalar IoU/GIoU written from the definition, hand-computed
pairs, mmdet's all-zero-weight shortcut, (N, 4) weights, avg_factor and reductions."""
from __future__ import annotations

import math

import pytest
import torch

from rcnn_det.models.losses import GIoULoss, IoULoss, giou_loss, iou_loss
from rcnn_det.registry import MODELS

EPS = torch.finfo(torch.float32).eps


def iou_giou_scalar(a: list[float], b: list[float]) -> tuple[float, float]:
    """IoU and GIoU of two valid xyxy boxes, from max/min of their corners."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enclose = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    iou = inter / union
    return iou, iou - (enclose - union) / enclose


def random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 20
    wh = torch.rand(n, 2, generator=g) * 10 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


# (pred, target, IoU, GIoU) worked by hand
HAND_PAIRS = [
    # half overlap along x: inter 1*2 = 2, union 4 + 4 - 2 = 6, enclose 3*2 = 6 -> GIoU = IoU
    ([0., 0., 2., 2.], [1., 0., 3., 2.], 1 / 3, 1 / 3),
    # disjoint 1x1 boxes, enclose 3x1 = 3, union 2: GIoU = 0 - 1/3
    ([0., 0., 1., 1.], [2., 0., 3., 1.], 0.0, -1 / 3),
    # nested: 1x1 inside 2x2, inter 1, union 4, enclose 4
    ([0., 0., 1., 1.], [0., 0., 2., 2.], 0.25, 0.25),
    # diagonal corners: inter 1, union 7, enclose 9 -> 1/7 - 2/9
    ([0., 0., 2., 2.], [1., 1., 3., 3.], 1 / 7, 1 / 7 - 2 / 9),
]


def test_giou_and_iou_losses_match_scalar_definition_on_random_pairs():
    pred, target = random_boxes(40, 0), random_boxes(40, 1)
    target[:10] = pred[:10] + 0.3                     # some overlapping pairs
    ious, gious = zip(*(iou_giou_scalar(a, b) for a, b in zip(pred.tolist(), target.tolist())))
    ious, gious = torch.tensor(ious), torch.tensor(gious)
    assert (ious > 0).sum() >= 10 and (ious == 0).sum() >= 10   # both regimes exercised
    torch.testing.assert_close(GIoULoss(reduction='none')(pred, target), 1 - gious)
    clamped = ious.clamp(min=1e-6)
    torch.testing.assert_close(IoULoss(reduction='none')(pred, target), -clamped.log())
    torch.testing.assert_close(IoULoss(mode='linear', reduction='none')(pred, target),
                               1 - clamped)
    torch.testing.assert_close(IoULoss(mode='square', reduction='none')(pred, target),
                               1 - clamped ** 2)


@pytest.mark.parametrize('pair', HAND_PAIRS)
def test_hand_computed_pairs(pair):
    a, b, iou, giou = pair
    assert iou_giou_scalar(a, b) == pytest.approx((iou, giou))       # the reference itself
    pred, target = torch.tensor([a]), torch.tensor([b])
    assert GIoULoss()(pred, target).item() == pytest.approx(1 - giou, rel=1e-5)
    assert giou_loss(pred, target).item() == pytest.approx(1 - giou, rel=1e-5)
    clamped = max(iou, 1e-6)                          # IoU clamped at eps, as mmdet
    assert IoULoss(mode='linear')(pred, target).item() == pytest.approx(1 - clamped, abs=1e-7)
    assert IoULoss()(pred, target).item() == pytest.approx(-math.log(clamped), rel=1e-5)
    assert iou_loss(pred, target, mode='square').item() == pytest.approx(1 - clamped ** 2,
                                                                         abs=1e-7)


def test_identical_boxes_give_zero_and_disjoint_giou_in_1_2():
    boxes = random_boxes(8, 2)
    torch.testing.assert_close(GIoULoss(reduction='none')(boxes, boxes.clone()), torch.zeros(8),
                               atol=1e-6, rtol=0)
    for mode in ('log', 'linear', 'square'):
        torch.testing.assert_close(IoULoss(mode=mode, reduction='none')(boxes, boxes.clone()),
                                   torch.zeros(8), atol=1e-6, rtol=0)
    far = boxes + 100.0
    loss = GIoULoss(reduction='none')(boxes, far)
    assert ((loss > 1) & (loss < 2)).all()
    # disjoint with zero IoU: the log loss is -log(eps), the linear loss 1
    assert IoULoss(reduction='none')(boxes, far).tolist() == pytest.approx(
        [-math.log(1e-6)] * 8, rel=1e-5)
    # moving apart increases the GIoU loss (the gradient signal plain IoU lacks)
    assert (GIoULoss(reduction='none')(boxes, boxes + 200.0) > loss).all()


def test_weights_avg_factor_reductions_loss_weight():
    pred, target = random_boxes(6, 3), random_boxes(6, 4)
    target[:3] = pred[:3] + 0.5
    elem = GIoULoss(reduction='none')(pred, target)
    w = torch.tensor([1., 0., 2., 0.5, 1., 0.])
    crit = GIoULoss()
    torch.testing.assert_close(crit(pred, target), elem.mean())
    torch.testing.assert_close(crit(pred, target, reduction_override='sum'), elem.sum())
    torch.testing.assert_close(crit(pred, target, w), (elem * w).mean())
    torch.testing.assert_close(GIoULoss(loss_weight=2.0)(pred, target, w, avg_factor=3),
                               2.0 * (elem * w).sum() / (3 + EPS))
    # (N, 4) weights are averaged over coordinates
    w4 = torch.tensor([[1., 1., 0., 0.], [0., 0., 0., 0.], [2., 2., 2., 2.],
                       [1., 0., 0., 0.], [1., 1., 1., 1.], [0., 0., 0., 0.]])
    torch.testing.assert_close(crit(pred, target, w4, avg_factor=4),
                               (elem * torch.tensor([0.5, 0., 2., 0.25, 1., 0.])).sum() / (4 + EPS))
    iou_elem = IoULoss(reduction='none')(pred, target)
    torch.testing.assert_close(IoULoss(loss_weight=0.5)(pred, target, w4, avg_factor=4),
                               0.5 * (iou_elem * w4.mean(-1)).sum() / (4 + EPS))
    with pytest.raises(ValueError):
        crit(pred, target, torch.ones(6, 3))
    with pytest.raises(ValueError, match='avg_factor'):
        GIoULoss(reduction='sum')(pred, target, w, avg_factor=2)
    with pytest.raises(ValueError):
        IoULoss(mode='cube')


@pytest.mark.parametrize('loss_cls', [GIoULoss, IoULoss])
@pytest.mark.parametrize('weight_shape', [(5,), (5, 4)])
def test_all_zero_weight_shortcut_is_a_zero_in_the_graph(loss_cls, weight_shape):
    pred = random_boxes(5, 5).requires_grad_()
    target = random_boxes(5, 6)                       # mostly disjoint: the loss would be > 0
    weight = torch.zeros(weight_shape)
    loss = loss_cls(loss_weight=3.0)(pred, target, weight, avg_factor=2)
    assert loss.shape == () and loss.item() == 0
    assert loss.requires_grad and loss.grad_fn is not None
    loss.backward()
    assert pred.grad.shape == (5, 4) and (pred.grad == 0).all()


def test_zero_weight_shortcut_and_reduction_none_differ_as_in_mmdet():
    pred, target = random_boxes(4, 7), random_boxes(4, 8)
    zeros = torch.zeros(4)
    # GIoULoss short-cuts before looking at the reduction: a scalar
    assert GIoULoss()(pred, target, zeros, reduction_override='none').shape == ()
    # IoULoss short-cuts only for 'mean'/'sum': 'none' keeps the per-box (zero) losses
    per_box = IoULoss()(pred, target, zeros, reduction_override='none')
    assert per_box.shape == (4,) and (per_box == 0).all()


def test_gradients_finite_and_empty_input():
    pred = random_boxes(6, 9).requires_grad_()
    target = random_boxes(6, 10)
    target[:2] = pred.detach()[:2]                     # identical pairs
    for crit in (GIoULoss(), IoULoss(), IoULoss(mode='linear'), IoULoss(mode='square')):
        pred.grad = None
        crit(pred, target).backward()
        assert torch.isfinite(pred.grad).all()
    pred.grad = None
    GIoULoss()(pred, pred.detach() + 50.0).backward()   # disjoint: GIoU still pulls
    assert pred.grad.abs().sum() > 0
    empty = torch.zeros(0, 4, requires_grad=True)
    for crit in (GIoULoss(), IoULoss()):
        loss = crit(empty, torch.zeros(0, 4), avg_factor=0)
        assert loss.item() == 0 and loss.requires_grad


def test_linear_flag_and_registry():
    with pytest.warns(DeprecationWarning):
        crit = IoULoss(linear=True)
    assert crit.mode == 'linear'
    assert isinstance(MODELS.build(dict(type='GIoULoss', loss_weight=2.0)), GIoULoss)
    built = MODELS.build(dict(type='IoULoss', mode='square', eps=1e-4))
    assert isinstance(built, IoULoss) and built.mode == 'square' and built.eps == 1e-4
