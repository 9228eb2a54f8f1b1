"""``L1Loss`` and ``SmoothL1Loss`` on box regression targets: pred, target (N, 4)."""
from __future__ import annotations

import torch
from mmengine.model import BaseModule
from torch import Tensor

from rcnn_det.registry import MODELS

from .reduction import check_reduction, weight_reduce_loss


def smooth_l1_loss(pred: Tensor, target: Tensor, beta: float = 1.0) -> Tensor:
    """Element-wise Huber loss: 0.5 d^2 / beta below beta, d - 0.5 beta above."""
    diff = (pred - target).abs()
    if beta <= 0:
        return diff
    return torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    return (pred - target).abs()


class _RegressionLoss(BaseModule):
    """Shared forward of the two L1-type losses (a helper base, not registered)."""

    def __init__(self, reduction: str = 'mean', loss_weight: float = 1.0) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.loss_weight = loss_weight

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None,
                **kwargs) -> Tensor:
        reduction = check_reduction(reduction_override or self.reduction)
        if target.numel() == 0:
            # No positives: a zero that still depends on pred, so DDP sees every parameter used.
            return pred.sum() * 0
        loss = self.elementwise(pred, target)
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)


@MODELS.register_module()
class SmoothL1Loss(_RegressionLoss):
    def __init__(self, beta: float = 1.0, reduction: str = 'mean', loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        self.beta = beta

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return smooth_l1_loss(pred, target, self.beta)


@MODELS.register_module()
class L1Loss(_RegressionLoss):
    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return l1_loss(pred, target)
