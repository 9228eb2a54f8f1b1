"""``CrossEntropyLoss``: softmax, sigmoid (one-vs-rest) or per-class mask cross entropy.

Shapes: softmax: cls_score (N, C + 1), label (N,) in [0, C];
sigmoid: cls_score (N, C), label (N,) in [0, C] where C means background (all-zero target).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor

from rcnn_det.registry import MODELS

from .reduction import check_reduction, weight_reduce_loss


def softmax_cross_entropy(cls_score: Tensor, label: Tensor, weight: Tensor | None = None,
                          class_weight: Tensor | None = None, reduction: str = 'mean',
                          avg_factor: float | None = None, ignore_index: int = -100,
                          avg_non_ignore: bool = False) -> Tensor:
    loss = F.cross_entropy(cls_score, label, weight=class_weight, reduction='none',
                           ignore_index=ignore_index)
    if avg_factor is None and avg_non_ignore and reduction == 'mean':
        avg_factor = (label != ignore_index).sum().item()
    if weight is not None:
        weight = weight.float()
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def binary_cross_entropy(cls_score: Tensor, label: Tensor, weight: Tensor | None = None,
                         class_weight: Tensor | None = None, reduction: str = 'mean',
                         avg_factor: float | None = None, ignore_index: int = -100,
                         avg_non_ignore: bool = False) -> Tensor:
    """Sigmoid cross entropy; integer labels are expanded to one-hot over ``cls_score``'s
    columns."""
    if cls_score.dim() != label.dim():
        # (N,) class indices -> (N, C) one-hot; index C (background) and ignored rows stay 0.
        valid = (label >= 0) & (label != ignore_index)
        targets = cls_score.new_zeros(cls_score.shape)
        fg = valid & (label < cls_score.shape[-1])
        targets[fg, label[fg]] = 1
        if weight is not None:
            weight = weight.view(-1, 1).expand_as(cls_score)
        valid_weight = valid.float().view(-1, 1).expand_as(cls_score)
        weight = valid_weight if weight is None else weight * valid_weight
        label = targets
        if avg_factor is None and avg_non_ignore and reduction == 'mean':
            avg_factor = valid.sum().item() * cls_score.shape[-1]  # valid elements, as mmdet
    loss = F.binary_cross_entropy_with_logits(cls_score, label.float(), pos_weight=class_weight,
                                              reduction='none')
    return weight_reduce_loss(loss, None if weight is None else weight.float(), reduction,
                              avg_factor)


def mask_cross_entropy(pred: Tensor, target: Tensor, label: Tensor, weight: Tensor | None = None,
                       class_weight: Tensor | None = None, reduction: str = 'mean',
                       avg_factor: float | None = None, ignore_index: int = -100,
                       avg_non_ignore: bool = False) -> Tensor:
    """pred (R, C, S, S) logits, target (R, S, S), label (R,): BCE on each RoI's own class only."""
    rows = torch.arange(pred.shape[0], device=pred.device)
    pred_slice = pred[rows, label]                                        # (R, S, S)
    return F.binary_cross_entropy_with_logits(pred_slice, target.float(), weight=class_weight,
                                              reduction='mean')[None]


@MODELS.register_module()
class CrossEntropyLoss(BaseModule):
    """mmdetection's CrossEntropyLoss: ``loss_weight * CE(cls_score, label)``."""

    def __init__(self, use_sigmoid: bool = False, use_mask: bool = False,
                 reduction: str = 'mean', class_weight: list[float] | None = None,
                 ignore_index: int | None = None, loss_weight: float = 1.0,
                 avg_non_ignore: bool = False) -> None:
        super().__init__()
        if use_sigmoid and use_mask:
            raise ValueError('CrossEntropyLoss: use_sigmoid and use_mask cannot both be True')
        self.use_sigmoid = use_sigmoid
        self.use_mask = use_mask
        self.reduction = check_reduction(reduction)
        self.class_weight = class_weight
        self.ignore_index = ignore_index
        self.loss_weight = loss_weight
        self.avg_non_ignore = avg_non_ignore
        if use_sigmoid:
            self.criterion = binary_cross_entropy
        elif use_mask:
            self.criterion = mask_cross_entropy
        else:
            self.criterion = softmax_cross_entropy

    def forward(self, cls_score: Tensor, label: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None,
                ignore_index: int | None = None, **kwargs) -> Tensor:
        reduction = reduction_override or self.reduction  # checked by weight_reduce_loss
        class_weight = (cls_score.new_tensor(self.class_weight)
                        if self.class_weight is not None else None)
        if ignore_index is None:
            ignore_index = -100 if self.ignore_index is None else self.ignore_index
        return self.loss_weight * self.criterion(
            cls_score, label, weight, class_weight=class_weight, reduction=reduction,
            avg_factor=avg_factor, ignore_index=ignore_index,
            avg_non_ignore=self.avg_non_ignore, **kwargs)
