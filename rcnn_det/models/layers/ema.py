"""``ExpMomentumEMA``: mmdetection's model EMA whose momentum decays exponentially, for
``custom_hooks=[dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002, ...)]``.

mmengine's ``EMAHook`` keeps the averaged copy of the model, evaluates and saves with it;
mmengine's own ``ExponentialMovingAverage`` (constant momentum) works as ``ema_type`` too.
"""
from __future__ import annotations

import math

import torch
from mmengine.model import ExponentialMovingAverage
from torch import Tensor, nn

from rcnn_det.registry import MODELS


@MODELS.register_module()
class ExpMomentumEMA(ExponentialMovingAverage):
    """At update ``steps`` (0, 1, ...) the average moves towards the model by
    ``momentum_t = (1 - momentum) * exp(-(1 + steps) / gamma) + momentum``: close to 1 at first
    (the average follows the young model), decaying to ``momentum`` over a few ``gamma``
    updates. mmdetection's arguments and formula (``mmdet.models.layers.ExpMomentumEMA``)."""

    def __init__(self, model: nn.Module, momentum: float = 0.0002, gamma: int = 2000,
                 interval: int = 1, device: torch.device | None = None,
                 update_buffers: bool = False) -> None:
        super().__init__(model=model, momentum=momentum, interval=interval, device=device,
                         update_buffers=update_buffers)
        if gamma <= 0:
            raise ValueError(f'ExpMomentumEMA: gamma must be > 0, got {gamma}')
        self.gamma = gamma

    def avg_func(self, averaged_param: Tensor, source_param: Tensor, steps: int) -> None:
        momentum = (1 - self.momentum) * math.exp(-float(1 + steps) / self.gamma) + self.momentum
        averaged_param.lerp_(source_param, momentum)
