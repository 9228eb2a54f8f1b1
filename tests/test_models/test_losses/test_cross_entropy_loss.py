"""CrossEntropyLoss (softmax, sigmoid, mask) against torch's functional losses and mmdet's
weight / avg_factor semantics: loss = sum(weight * l) / avg_factor."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rcnn_det.models.losses import CrossEntropyLoss, weight_reduce_loss
from rcnn_det.registry import MODELS

EPS = torch.finfo(torch.float32).eps


def logits(n: int, c: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def test_softmax_equals_f_cross_entropy():
    pred, label = logits(6, 4), torch.tensor([0, 3, 1, 3, 2, 0])
    loss = CrossEntropyLoss()(pred, label)
    torch.testing.assert_close(loss, F.cross_entropy(pred, label))
    torch.testing.assert_close(CrossEntropyLoss(reduction='sum')(pred, label),
                               F.cross_entropy(pred, label, reduction='sum'))
    torch.testing.assert_close(CrossEntropyLoss()(pred, label, reduction_override='none'),
                               F.cross_entropy(pred, label, reduction='none'))
    torch.testing.assert_close(CrossEntropyLoss(loss_weight=2.5)(pred, label),
                               2.5 * F.cross_entropy(pred, label))
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_softmax_weight_and_avg_factor():
    pred, label = logits(5, 3, 1), torch.tensor([0, 1, 2, 2, 1])
    weight = torch.tensor([1., 0., 2., 1., 0.5])
    per_sample = F.cross_entropy(pred, label, reduction='none')
    loss = CrossEntropyLoss()(pred, label, weight, avg_factor=3.0)
    torch.testing.assert_close(loss, (per_sample * weight).sum() / (3.0 + EPS))
    # without avg_factor, 'mean' divides by the number of elements, not by the weight sum
    torch.testing.assert_close(CrossEntropyLoss()(pred, label, weight),
                               (per_sample * weight).sum() / 5)
    torch.testing.assert_close(CrossEntropyLoss(reduction='sum')(pred, label, weight),
                               (per_sample * weight).sum())
    with pytest.raises(ValueError, match='avg_factor'):
        CrossEntropyLoss(reduction='sum')(pred, label, weight, avg_factor=2.0)


def test_softmax_class_weight_is_per_sample_not_a_weighted_mean():
    pred, label = logits(4, 3, 2), torch.tensor([0, 1, 2, 2])
    class_weight = [1.0, 2.0, 0.5]
    per_sample = F.cross_entropy(pred, label, weight=torch.tensor(class_weight),
                                 reduction='none')
    torch.testing.assert_close(CrossEntropyLoss(class_weight=class_weight)(pred, label),
                               per_sample.mean())


def test_softmax_ignore_index_and_avg_non_ignore():
    pred, label = logits(5, 3, 3), torch.tensor([0, 255, 2, 1, 255])
    per_sample = F.cross_entropy(pred, label, reduction='none', ignore_index=255)
    assert per_sample[1] == 0 and per_sample[4] == 0
    torch.testing.assert_close(CrossEntropyLoss(ignore_index=255)(pred, label),
                               per_sample.sum() / 5)
    torch.testing.assert_close(
        CrossEntropyLoss(ignore_index=255, avg_non_ignore=True)(pred, label),
        F.cross_entropy(pred, label, ignore_index=255))


def test_forward_accepts_ignore_index_like_mmdet():
    pred, label = logits(4, 3, 4), torch.tensor([0, 1, 2, 255])
    loss = CrossEntropyLoss()(pred, label, ignore_index=255)
    torch.testing.assert_close(loss, F.cross_entropy(pred, label, ignore_index=255,
                                                     reduction='sum') / 4)


def sigmoid_reference(pred, label, weight=None):
    """One-hot over pred's C columns; label C (background) is all zeros."""
    num_classes = pred.shape[1]
    target = torch.zeros_like(pred)
    for i, k in enumerate(label.tolist()):
        if 0 <= k < num_classes:
            target[i, k] = 1
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction='none')
    if weight is not None:
        loss = loss * weight[:, None]
    return loss


def test_sigmoid_integer_labels_with_background_index():
    pred = logits(5, 3, 5)
    label = torch.tensor([0, 3, 2, 3, 1])      # 3 = background: all-zero targets
    loss = CrossEntropyLoss(use_sigmoid=True)(pred, label)
    torch.testing.assert_close(loss, sigmoid_reference(pred, label).mean())
    weight = torch.tensor([1., 0., 2., 1., 1.])
    loss = CrossEntropyLoss(use_sigmoid=True)(pred, label, weight, avg_factor=4)
    torch.testing.assert_close(loss, sigmoid_reference(pred, label, weight).sum() / (4 + EPS))
    loss.backward()
    assert pred.grad[1].abs().sum() == 0       # weight 0 -> no gradient


def test_sigmoid_single_channel_rpn_style():
    # The RPN: one column, label 0 = object, 1 = background
    pred = logits(4, 1, 6)
    label = torch.tensor([0, 1, 1, 0])
    loss = CrossEntropyLoss(use_sigmoid=True)(pred, label, reduction_override='none')
    expected = F.binary_cross_entropy_with_logits(pred, torch.tensor([[1.], [0.], [0.], [1.]]),
                                                  reduction='none')
    torch.testing.assert_close(loss, expected)


def test_sigmoid_float_targets_same_shape():
    pred = logits(3, 2, 7)
    target = torch.tensor([[1., 0.], [0.3, 0.7], [0., 0.]])
    torch.testing.assert_close(CrossEntropyLoss(use_sigmoid=True)(pred, target),
                               F.binary_cross_entropy_with_logits(pred, target))


def test_sigmoid_ignored_rows_get_zero_weight():
    pred = logits(4, 3, 8)
    label = torch.tensor([0, -1, 2, 255])
    loss = CrossEntropyLoss(use_sigmoid=True, ignore_index=255)(pred, label,
                                                                reduction_override='none')
    assert (loss[1] == 0).all() and (loss[3] == 0).all()
    torch.testing.assert_close(loss[[0, 2]], sigmoid_reference(pred, label)[[0, 2]])


def test_sigmoid_avg_non_ignore_counts_elements_like_mmdet():
    pred = logits(4, 3, 9)
    label = torch.tensor([0, 255, 2, 3])
    loss = CrossEntropyLoss(use_sigmoid=True, ignore_index=255, avg_non_ignore=True)(pred, label)
    valid = torch.tensor([1., 0., 1., 1.])
    expected = sigmoid_reference(pred, label, valid).sum() / (3 * 3)
    torch.testing.assert_close(loss, expected)


def test_mask_cross_entropy_uses_each_rois_own_class():
    g = torch.Generator().manual_seed(10)
    pred = torch.randn(3, 4, 5, 5, generator=g)
    target = (torch.rand(3, 5, 5, generator=g) > 0.5).float()
    label = torch.tensor([2, 0, 3])
    loss = CrossEntropyLoss(use_mask=True)(pred, target, label)
    expected = F.binary_cross_entropy_with_logits(pred[[0, 1, 2], [2, 0, 3]], target)
    assert loss.shape == (1,)
    torch.testing.assert_close(loss[0], expected)


def test_weight_reduce_loss_semantics():
    loss = torch.tensor([1., 2., 3., 4.])
    weight = torch.tensor([1., 0., 1., 0.5])
    assert weight_reduce_loss(loss, weight, 'mean').item() == pytest.approx(6 / 4)
    assert weight_reduce_loss(loss, weight, 'sum').item() == pytest.approx(6)
    assert weight_reduce_loss(loss, None, 'mean', avg_factor=2).item() == pytest.approx(5)
    assert weight_reduce_loss(loss, weight, 'none').tolist() == [1., 0., 3., 2.]
    assert weight_reduce_loss(loss, weight, 'none', avg_factor=3).tolist() == [1., 0., 3., 2.]
    # avg_factor 0 with no positives: 0 / eps = 0, not nan
    assert weight_reduce_loss(torch.zeros(3), None, 'mean', avg_factor=0).item() == 0


def test_config_checks():
    with pytest.raises(ValueError):
        CrossEntropyLoss(use_sigmoid=True, use_mask=True)
    with pytest.raises(ValueError, match='reduction'):
        CrossEntropyLoss(reduction='avg')
    loss = MODELS.build(dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0))
    assert isinstance(loss, CrossEntropyLoss) and loss.use_sigmoid
