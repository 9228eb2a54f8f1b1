"""QualityFocalLoss against the formula written out element by element: the (labels, scores)
and dense tensor targets, activated inputs, weights, avg_factor, reductions, Co-DINO's call,
finite gradients and errors."""
from __future__ import annotations

import math

import pytest
import torch

from rcnn_det.models.losses import QualityFocalLoss, quality_focal_loss
from rcnn_det.registry import MODELS

EPS = torch.finfo(torch.float32).eps
NUM_CLASSES = 4
LABELS = torch.tensor([0, 3, 4, 1, 4, 2, -1, 3])   # 4 = background; -1 counts as negative
SCORES = torch.tensor([0.8, 0.35, 0.0, 1.0, 0.0, 0.05, 0.0, 0.0])


def qfl_scalar(x: float, t: float, beta: float, activated: bool = False) -> float:
    """One element: p = sigmoid(x) (or x); BCE(p, t) * |t - p|^beta."""
    p = x if activated else 1.0 / (1.0 + math.exp(-x))
    bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    return bce * abs(t - p) ** beta


def brute_force_labels(pred, labels, scores, beta, activated=False) -> torch.Tensor:
    """(N,): positives BCE(p, score) |score - p|^beta on the label's column, every other
    element BCE(p, 0) p^beta, summed over the classes of each prediction."""
    out = []
    for row, label, score in zip(pred.tolist(), labels.tolist(), scores.tolist()):
        total = 0.0
        for c, x in enumerate(row):
            p = x if activated else 1.0 / (1.0 + math.exp(-x))
            if c == label:
                total += qfl_scalar(x, score, beta, activated)
            else:
                total += -math.log(1 - p) * p ** beta
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def brute_force_dense(pred, target, beta, activated=False) -> torch.Tensor:
    return torch.tensor([sum(qfl_scalar(x, t, beta, activated) for x, t in zip(pr, tr))
                         for pr, tr in zip(pred.tolist(), target.tolist())],
                        dtype=torch.float64)


def logits(n: int = 8, c: int = NUM_CLASSES, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, c, generator=g)).requires_grad_()


@pytest.mark.parametrize('beta', [2.0, 1.0, 0.5, 3.0])
def test_label_target_matches_the_elementwise_formula(beta):
    pred = logits()
    loss = QualityFocalLoss(beta=beta, reduction='none')(pred, (LABELS, SCORES))
    assert loss.shape == (8,)
    torch.testing.assert_close(loss.double(), brute_force_labels(pred, LABELS, SCORES, beta),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('beta', [2.0, 1.5])
def test_dense_soft_target_matches_the_elementwise_formula(beta):
    pred = logits(seed=1)
    g = torch.Generator().manual_seed(2)
    target = torch.rand(8, NUM_CLASSES, generator=g) * (torch.rand(8, NUM_CLASSES,
                                                                   generator=g) > 0.6)
    loss = QualityFocalLoss(beta=beta, reduction='none')(pred, target)
    torch.testing.assert_close(loss.double(), brute_force_dense(pred, target, beta),
                               rtol=1e-5, atol=1e-6)


def test_the_label_pair_equals_its_dense_target_values_and_gradients():
    dense = torch.zeros(8, NUM_CLASSES)
    for i, (label, score) in enumerate(zip(LABELS.tolist(), SCORES.tolist())):
        if 0 <= label < NUM_CLASSES:
            dense[i, label] = score
    a, b = logits(seed=3), logits(seed=3)
    loss_fn = QualityFocalLoss()
    la, lb = loss_fn(a, (LABELS, SCORES)), loss_fn(b, dense)
    la.backward()
    lb.backward()
    assert torch.equal(la, lb) and torch.equal(a.grad, b.grad)


def test_activated_inputs_are_probabilities():
    pred = logits(seed=4)
    probs = pred.detach().sigmoid().requires_grad_()
    loss = QualityFocalLoss(activated=True, reduction='none')(probs, (LABELS, SCORES))
    torch.testing.assert_close(loss.double(),
                               brute_force_labels(probs, LABELS, SCORES, 2.0, activated=True),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, QualityFocalLoss(reduction='none')(pred, (LABELS, SCORES)),
                               rtol=1e-5, atol=1e-6)
    target = torch.rand(8, NUM_CLASSES, generator=torch.Generator().manual_seed(5))
    dense = QualityFocalLoss(activated=True, reduction='none')(probs, target)
    torch.testing.assert_close(dense.double(), brute_force_dense(probs, target, 2.0, True),
                               rtol=1e-5, atol=1e-6)


def test_hand_values_at_p_one_half():
    # x = 0: p = 0.5, BCE = log 2 for any target t in {0, 1}; (0.5)^2 modulator
    pred = torch.zeros(2, 2)
    labels, scores = torch.tensor([1, 2]), torch.tensor([0.5, 0.0])
    loss = quality_focal_loss(pred, torch.tensor([[0.0, 0.5], [0.0, 0.0]]))
    # row 0: a negative column (log 2 / 4) and a positive at score 0.5 = p (modulator 0)
    assert loss.tolist() == pytest.approx([math.log(2) / 4, math.log(2) / 2])
    assert QualityFocalLoss(reduction='none')(pred, (labels, scores)).tolist() == pytest.approx(
        loss.tolist())


def test_weight_avg_factor_reductions_and_loss_weight():
    pred = logits(seed=6)
    weight = torch.tensor([1., 0., 2., 1., 0.5, 1., 0., 3.])
    per = brute_force_labels(pred, LABELS, SCORES, 2.0)
    loss = QualityFocalLoss(loss_weight=0.7)
    torch.testing.assert_close(loss(pred, (LABELS, SCORES)).double(), 0.7 * per.mean())
    torch.testing.assert_close(loss(pred, (LABELS, SCORES), weight).double(),
                               0.7 * (per * weight).mean())
    torch.testing.assert_close(loss(pred, (LABELS, SCORES), weight, avg_factor=3.0).double(),
                               0.7 * (per * weight).sum() / (3.0 + EPS))
    torch.testing.assert_close(
        loss(pred, (LABELS, SCORES), weight, reduction_override='sum').double(),
        0.7 * (per * weight).sum())
    none = loss(pred, (LABELS, SCORES), weight[:, None], reduction_override='none')
    assert none.shape == (8,)
    torch.testing.assert_close(none.double(), 0.7 * per * weight)
    with pytest.raises(ValueError, match='avg_factor'):
        loss(pred, (LABELS, SCORES), avg_factor=2.0, reduction_override='sum')


def test_co_dino_call_and_the_registry():
    # co_dino_head.py (loss_single_aux): loss_cls(cls_scores, (labels, scores),
    # weight=label_weights, avg_factor=cls_avg_factor), labels num_classes for background
    loss_cls = MODELS.build(dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0,
                                 loss_weight=1.0))
    assert isinstance(loss_cls, QualityFocalLoss) and loss_cls.use_sigmoid
    cls_scores = logits(seed=7)
    labels = torch.tensor([4, 1, 4, 4, 0, 4, 3, 4])
    scores = cls_scores.new_zeros(labels.shape)
    scores[labels < 4] = torch.tensor([0.6, 0.9, 0.2])
    label_weights = torch.ones(8)
    for avg in (3.0, torch.tensor([3.0])):
        out = loss_cls(cls_scores, (labels, scores), weight=label_weights, avg_factor=avg)
        expected = brute_force_labels(cls_scores, labels, scores, 2.0).sum() / 3.0
        torch.testing.assert_close(out.double().reshape(()), expected)


def test_gradients_are_finite_and_no_predictions_give_a_zero_in_the_graph():
    pred = torch.tensor([[30., -30., 0., 12.], [-30., 30., 5., -5.]], requires_grad=True)
    loss = QualityFocalLoss()(pred, (torch.tensor([0, 4]), torch.tensor([1.0, 0.0])))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    probs = torch.tensor([[1e-7, 1 - 1e-7, 0.5, 0.9]], requires_grad=True)
    loss = QualityFocalLoss(activated=True)(probs, (torch.tensor([1]), torch.tensor([0.7])))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(probs.grad).all()
    empty = torch.zeros(0, NUM_CLASSES, requires_grad=True)
    zero = QualityFocalLoss()(empty, (torch.zeros(0, dtype=torch.long), torch.zeros(0)),
                              avg_factor=1.0)
    zero.backward()
    assert zero.item() == 0 and zero.requires_grad


def test_errors():
    with pytest.raises(NotImplementedError, match='use_sigmoid'):
        QualityFocalLoss(use_sigmoid=False)
    with pytest.raises(ValueError, match='reduction'):
        QualityFocalLoss(reduction='avg')
    loss, pred = QualityFocalLoss(), logits()
    with pytest.raises(ValueError, match='tuple target'):
        loss(pred, (LABELS, SCORES, SCORES))
    with pytest.raises(ValueError, match='shape of pred'):
        loss(pred, torch.zeros(8, NUM_CLASSES + 1))
    with pytest.raises(ValueError, match='one value per prediction'):
        loss(pred, (LABELS, SCORES), weight=torch.ones(8, NUM_CLASSES))
