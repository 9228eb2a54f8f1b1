"""``OptimWrapper`` and ``AmpOptimWrapper``: mmengine's (same names and arguments) that skip an
optimizer step whose loss or gradient norm is not finite.

mmengine applies whatever the backward pass produced: one NaN loss turns every weight into NaN
and training goes on, writing checkpoints of NaNs. Here, after the backward pass (and the
gradient accumulation mmengine does), a step runs only if the loss and the global gradient norm
are finite on every process (a loss of any micro-batch of a gradient-accumulation window
counts; the decision is all-reduced, so every rank skips the same steps).
With ``AmpOptimWrapper`` only the loss is checked: an overflowing gradient is the dynamic loss
scaler's business, which already skips that step and lowers its scale (early overflows are
normal there). The wrapper records the outcome in ``last_step_skipped`` and ``last_grad_norm``;
rcnn_det's train loops log it, restore the buffers and stop after too many skips in a row.
"""
from __future__ import annotations

import math

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.optim import AmpOptimWrapper as MMEngineAmpOptimWrapper
from mmengine.optim import OptimWrapper as MMEngineOptimWrapper

from rcnn_det.registry import OPTIM_WRAPPERS


class _NonFiniteGuard:
    """``update_params`` with the finiteness check (module docstring)."""

    last_step_skipped = False
    last_grad_norm: float | None = None
    check_grad_norm = True
    _window_loss_finite = True  # every loss since the last update was finite

    def _grad_norm(self) -> float | None:
        grads = [p.grad for group in self.optimizer.param_groups for p in group['params']
                 if p.grad is not None]
        if not self.check_grad_norm or not grads:
            return None
        return float(torch.nn.utils.get_total_norm(grads))

    @staticmethod
    def _agree_everywhere(finite: bool, device: torch.device) -> bool:
        """True only if ``finite`` holds on every process (one all-reduce when distributed)."""
        if get_world_size() > 1:
            flag = torch.tensor([float(finite)], device=device)
            all_reduce(flag, op='min')
            finite = bool(flag.item() > 0)
        return finite

    def update_params(self, loss: torch.Tensor, step_kwargs: dict | None = None,
                      zero_kwargs: dict | None = None) -> None:
        loss = self.scale_loss(loss)
        self.backward(loss)
        self.last_step_skipped, self.last_grad_norm = False, None
        self._window_loss_finite &= math.isfinite(float(loss.detach()))
        if not self.should_update():
            return
        self.last_grad_norm = self._grad_norm()
        finite = self._window_loss_finite and (
            self.last_grad_norm is None or math.isfinite(self.last_grad_norm))
        self.last_step_skipped = not self._agree_everywhere(finite, loss.device)
        self._window_loss_finite = True
        if not self.last_step_skipped:
            self.step(**(step_kwargs or {}))
        self.zero_grad(**(zero_kwargs or {}))


@OPTIM_WRAPPERS.register_module()
class OptimWrapper(_NonFiniteGuard, MMEngineOptimWrapper):
    """mmengine's ``OptimWrapper``; a step with a non-finite loss or gradient norm is skipped."""


@OPTIM_WRAPPERS.register_module()
class AmpOptimWrapper(_NonFiniteGuard, MMEngineAmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper``; a step with a non-finite loss is skipped (overflowing
    gradients are left to the loss scaler, which skips those steps itself)."""

    check_grad_norm = False
