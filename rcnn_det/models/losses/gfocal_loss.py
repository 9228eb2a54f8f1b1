"""``QualityFocalLoss``: mmdetection's quality focal loss (Generalized Focal Loss, GFL; Co-DINO's
classification loss), ``mmdet/models/losses/gfocal_loss.py``.

Shape letters: N predictions (anchors or queries), C foreground classes.
pred (N, C) logits (probabilities when ``activated``). The target is a soft score per element:
either given densely, a (N, C) float tensor (mmdet's ``quality_focal_loss_tensor_target``), or
as mmdet's heads pass it, a pair ``(labels (N,), scores (N,))`` with labels in [0, C], C meaning
background, and scores the quality (IoU) of each positive; the pair stands for the dense target
that holds ``scores[i]`` in column ``labels[i]`` of a positive row and zeros elsewhere.
Per element, with p = P(class) and t its target:

    loss = BCE(p, t) * |t - p|^beta

so a negative (t = 0) costs BCE(p, 0) p^beta. Unlike ``FocalLoss``, the loss of a prediction is
the SUM over its C classes: 'none' returns (N,), 'mean' divides by N (or ``avg_factor``), and
``weight`` is one number per prediction, (N,), as in mmdet.
"""
from __future__ import annotations

import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor

from rcnn_det.registry import MODELS

from .reduction import check_reduction, weight_reduce_loss


def quality_focal_loss(pred: Tensor, target: Tensor, beta: float = 2.0,
                       activated: bool = False) -> Tensor:
    """(N,) loss of each prediction: ``BCE(p, t) * |t - p|^beta`` summed over its C classes.

    ``target`` (N, C) soft scores in [0, 1]; ``pred`` (N, C) logits, or probabilities when
    ``activated``.
    """
    if pred.shape != target.shape:
        raise ValueError(f'QualityFocalLoss: a tensor target must have the shape of pred '
                         f'{tuple(pred.shape)}, got {tuple(target.shape)}')
    target = target.type_as(pred)
    if activated:
        prob = pred
        bce = F.binary_cross_entropy(pred, target, reduction='none')   # log clamped at -100
    else:
        prob = pred.sigmoid()
        bce = F.binary_cross_entropy_with_logits(pred, target, reduction='none')
    return (bce * (target - prob).abs().pow(beta)).sum(dim=1)


def labels_to_quality_target(labels: Tensor, scores: Tensor, num_classes: int) -> Tensor:
    """(N,) labels in [0, C] (C: background) and (N,) scores -> the (N, C) dense target: the
    score in the label's column of each positive, zeros elsewhere (every negative row)."""
    labels = labels.long()
    is_pos = (labels >= 0) & (labels < num_classes)                         # (N,)
    target = scores.new_zeros(labels.shape[0], num_classes)
    target[is_pos, labels[is_pos]] = scores[is_pos]
    return target


@MODELS.register_module()
class QualityFocalLoss(BaseModule):
    """``loss_weight * reduce(weight * qfl(pred, target))``; see the module docstring.

    Args:
        use_sigmoid: must be True (mmdet has only the sigmoid form).
        beta: exponent of the modulating factor |t - p|.
        activated: ``pred`` already holds probabilities (sigmoid applied by the caller).
    forward:
        pred (N, C); target ``(labels (N,), scores (N,))`` or a (N, C) tensor; weight (N,);
        avg_factor replaces N in 'mean' (mmdet: sum / (avg_factor + eps)).
    """

    def __init__(self, use_sigmoid: bool = True, beta: float = 2.0, reduction: str = 'mean',
                 loss_weight: float = 1.0, activated: bool = False) -> None:
        super().__init__()
        if not use_sigmoid:
            raise NotImplementedError('QualityFocalLoss: only the sigmoid form is implemented '
                                      '(use_sigmoid=True), as in mmdetection')
        self.use_sigmoid = use_sigmoid
        self.beta = beta
        self.reduction = check_reduction(reduction)
        self.loss_weight = loss_weight
        self.activated = activated

    def forward(self, pred: Tensor, target: tuple[Tensor, Tensor] | Tensor,
                weight: Tensor | None = None, avg_factor: float | Tensor | None = None,
                reduction_override: str | None = None) -> Tensor:
        reduction = check_reduction(reduction_override or self.reduction)
        if isinstance(target, (tuple, list)):
            if len(target) != 2:
                raise ValueError('QualityFocalLoss: a tuple target must be (labels (N,), '
                                 f'scores (N,)), got {len(target)} elements')
            target = labels_to_quality_target(target[0], target[1], pred.shape[1])
        loss = quality_focal_loss(pred, target, self.beta, self.activated)     # (N,)
        if weight is not None:
            if weight.numel() != loss.numel():
                raise ValueError(f'QualityFocalLoss: weight must have one value per prediction '
                                 f'({loss.numel()}), got shape {tuple(weight.shape)}')
            weight = weight.reshape(loss.shape).type_as(loss)
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)
