"""How every rcnn_det loss turns per-element values into one number (mmdetection's semantics).

``weight`` multiplies element-wise; ``avg_factor`` replaces the element count of a mean, so a loss
can be normalised by the number of sampled anchors or positives instead of by its tensor size.
"""
from __future__ import annotations

import torch
from torch import Tensor

_EPS = torch.finfo(torch.float32).eps  # mmdet adds it to avg_factor so that 0 positives give 0


def weight_reduce_loss(loss: Tensor, weight: Tensor | None = None, reduction: str = 'mean',
                       avg_factor: float | Tensor | None = None) -> Tensor:
    """Element-wise ``loss`` times ``weight``, reduced ('none', 'mean' or 'sum').

    An empty ``loss`` (no positives) reduces to a zero that stays in the graph, so that DDP
    sees every parameter used.
    """
    if loss.numel() == 0 and reduction != 'none':
        return loss.sum() * 0
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        if reduction == 'mean':
            return loss.mean()
        if reduction == 'sum':
            return loss.sum()
        if reduction == 'none':
            return loss
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    if reduction == 'mean':
        return loss.sum() / (avg_factor + _EPS)
    if reduction == 'none':
        return loss
    raise ValueError('avg_factor can only be used with reduction="mean" or "none"')


def check_reduction(reduction: str) -> str:
    if reduction not in ('none', 'mean', 'sum'):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return reduction
