"""Small helpers the heads share."""
from __future__ import annotations

import torch
import torch.distributed as dist


def reduce_mean(value: float, device: torch.device | str = 'cpu') -> float:
    """The mean of ``value`` over the processes of a distributed run (itself otherwise), so
    that every process normalises its loss by the same count (mmdet's reduce_mean)."""
    if not (dist.is_available() and dist.is_initialized()):
        return float(value)
    tensor = torch.tensor(float(value), device=device)
    dist.all_reduce(tensor.div_(dist.get_world_size()))
    return float(tensor)
