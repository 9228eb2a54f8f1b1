"""``IoULoss`` and ``GIoULoss`` between aligned box pairs (ATSS, FCOS, DETR-style heads).

Shape letters: N box pairs. pred, target (N, 4) xyxy in the same units; weight (N,) or (N, 4)
(averaged over the 4 coordinates, as mmdet); the per-pair loss is (N,).

mmdetection's quirk kept on purpose: when no weight is > 0 the loss is ``(pred * weight).sum()``,
a zero that stays in the graph, before any IoU is computed. GIoULoss takes that path for every
reduction, IoULoss only when the reduction is not 'none' (so 'none' still returns (N,) zeros).
"""
from __future__ import annotations

import warnings

from mmengine.model import BaseModule
from torch import Tensor

from rcnn_det.registry import MODELS
from rcnn_det.structures import bbox_overlaps

from .reduction import check_reduction, weight_reduce_loss

IOU_LOSS_MODES = ('linear', 'square', 'log')


def iou_loss(pred: Tensor, target: Tensor, mode: str = 'log', eps: float = 1e-6) -> Tensor:
    """(N,) loss of IoU clamped at ``eps``: 'linear' 1 - iou, 'square' 1 - iou^2, 'log' -log iou."""
    ious = bbox_overlaps(pred, target, is_aligned=True).clamp(min=eps)
    if mode == 'linear':
        return 1 - ious
    if mode == 'square':
        return 1 - ious * ious
    if mode == 'log':
        return -ious.log()
    raise ValueError(f'iou_loss: mode must be one of {IOU_LOSS_MODES}, got {mode!r}')


def giou_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """(N,) 1 - GIoU, in [0, 2); union and enclosing area are clamped at ``eps``."""
    return 1 - bbox_overlaps(pred, target, mode='giou', is_aligned=True, eps=eps)


def _all_weights_zero(weight: Tensor | None) -> bool:
    return weight is not None and not bool((weight > 0).any())


def _zero_in_graph(pred: Tensor, weight: Tensor) -> Tensor:
    """mmdet's ``(pred * weight).sum()`` with (N,) weights broadcast over the 4 coordinates."""
    if pred.dim() == weight.dim() + 1:
        weight = weight.unsqueeze(1)
    return (pred * weight).sum()


def _per_box_weight(pred: Tensor, weight: Tensor | None) -> Tensor | None:
    """(N, 4) weights -> (N,) by their mean over coordinates; (N,) passes through."""
    if weight is None or weight.dim() <= 1:
        return weight
    if weight.shape != pred.shape:
        raise ValueError(f'IoU losses: weight shape {tuple(weight.shape)} must be (N,) or the '
                         f'shape of pred {tuple(pred.shape)}')
    return weight.mean(-1)


@MODELS.register_module()
class IoULoss(BaseModule):
    """``loss_weight * reduce(weight * f(IoU(pred, target)))``, f chosen by ``mode``.

    ``linear=True`` is mmdet's deprecated spelling of ``mode='linear'``.
    """

    def __init__(self, linear: bool = False, eps: float = 1e-6, reduction: str = 'mean',
                 loss_weight: float = 1.0, mode: str = 'log') -> None:
        super().__init__()
        if mode not in IOU_LOSS_MODES:
            raise ValueError(f'IoULoss: mode must be one of {IOU_LOSS_MODES}, got {mode!r}')
        if linear:
            mode = 'linear'
            warnings.warn('IoULoss: linear=True is deprecated, use mode="linear"',
                          DeprecationWarning, stacklevel=2)
        self.linear = linear
        self.mode = mode
        self.eps = eps
        self.reduction = check_reduction(reduction)
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | Tensor | None = None,
                reduction_override: str | None = None, **kwargs) -> Tensor:
        reduction = check_reduction(reduction_override or self.reduction)
        if reduction != 'none' and _all_weights_zero(weight):
            return _zero_in_graph(pred, weight)
        weight = _per_box_weight(pred, weight)
        loss = iou_loss(pred, target, self.mode, self.eps)
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)


@MODELS.register_module()
class GIoULoss(BaseModule):
    """``loss_weight * reduce(weight * (1 - GIoU(pred, target)))``."""

    def __init__(self, eps: float = 1e-6, reduction: str = 'mean',
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.eps = eps
        self.reduction = check_reduction(reduction)
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | Tensor | None = None,
                reduction_override: str | None = None, **kwargs) -> Tensor:
        if _all_weights_zero(weight):
            return _zero_in_graph(pred, weight)
        reduction = check_reduction(reduction_override or self.reduction)
        weight = _per_box_weight(pred, weight)
        loss = giou_loss(pred, target, self.eps)
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)
