"""``FocalLoss``: mmdetection's sigmoid focal loss (RetinaNet, ATSS, Deformable DETR).

Shape letters: N predictions (anchors or queries), C foreground classes.
pred (N, C) logits (probabilities when ``activated``); target either (N,) int64 labels in [0, C]
with C meaning background (an all-zero row), or (N, C) float targets in [0, 1] (one-hot or soft
quality targets). Per element, with p = P(class) and t the target:

    loss = (alpha t + (1 - alpha)(1 - t)) * ((1 - p) t + p (1 - t))^gamma * BCE(p, t)

which for t in {0, 1} is alpha_t (1 - p_t)^gamma (-log p_t). As in mmdet, ``alpha`` is always
applied, a negative one included (torchvision skips alpha < 0; mmdet does not).
"""
from __future__ import annotations

import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor

from rcnn_det.registry import MODELS

from .reduction import check_reduction, weight_reduce_loss


def sigmoid_focal_loss(pred: Tensor, target: Tensor, gamma: float = 2.0, alpha: float = 0.25,
                       activated: bool = False) -> Tensor:
    """Element-wise focal loss (N, C); ``target`` (N, C) float, ``pred`` logits or probabilities."""
    target = target.type_as(pred)
    prob = pred if activated else pred.sigmoid()
    one_minus_pt = (1 - prob) * target + prob * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * one_minus_pt.pow(gamma)
    if activated:
        bce = F.binary_cross_entropy(pred, target, reduction='none')  # log clamped at -100
    else:
        bce = F.binary_cross_entropy_with_logits(pred, target, reduction='none')
    return bce * focal_weight


def labels_to_one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """(N,) labels in [0, C] -> (N, C) one-hot; label C (background) gives an all-zero row."""
    return F.one_hot(labels.long(), num_classes=num_classes + 1)[:, :num_classes]


def _weight_like(loss: Tensor, weight: Tensor) -> Tensor:
    """mmdet's rule: (N,) weights broadcast over classes, other shapes are viewed as (N, C)."""
    if weight.shape == loss.shape:
        return weight
    if weight.shape[0] == loss.shape[0] and weight.numel() == loss.shape[0]:
        return weight.view(-1, 1)
    if weight.numel() != loss.numel():
        raise ValueError(f'FocalLoss: weight of shape {tuple(weight.shape)} fits neither (N,) '
                         f'nor (N, C) = {tuple(loss.shape)}')
    return weight.view(loss.shape[0], -1)


@MODELS.register_module()
class FocalLoss(BaseModule):
    """``loss_weight * reduce(weight * focal(pred, target))``; see the module docstring.

    Args:
        use_sigmoid: must be True; mmdet has no softmax focal loss either.
        gamma: focusing exponent on 1 - p_t; alpha: weight of positives, 1 - alpha of negatives.
        activated: ``pred`` already holds probabilities (sigmoid applied by the caller).
    forward:
        pred (N, C); target (N,) labels or (N, C) floats; weight (N,) or (N, C);
        avg_factor replaces the element count of 'mean' (mmdet: sum / (avg_factor + eps)).
    """

    def __init__(self, use_sigmoid: bool = True, gamma: float = 2.0, alpha: float = 0.25,
                 reduction: str = 'mean', loss_weight: float = 1.0,
                 activated: bool = False) -> None:
        super().__init__()
        if not use_sigmoid:
            raise NotImplementedError('FocalLoss: only the sigmoid focal loss is implemented '
                                      '(use_sigmoid=True), as in mmdetection')
        self.use_sigmoid = use_sigmoid
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = check_reduction(reduction)
        self.loss_weight = loss_weight
        self.activated = activated

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | Tensor | None = None,
                reduction_override: str | None = None) -> Tensor:
        reduction = check_reduction(reduction_override or self.reduction)
        if target.dim() != pred.dim():
            target = labels_to_one_hot(target, pred.shape[1])
        loss = sigmoid_focal_loss(pred, target, self.gamma, self.alpha, self.activated)
        if weight is not None:
            weight = _weight_like(loss, weight).type_as(loss)
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)
