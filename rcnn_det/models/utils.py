"""Small helpers the heads share."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


def reduce_mean(value: float, device: torch.device | str = 'cpu') -> float:
    """The mean of ``value`` over the processes of a distributed run (itself otherwise), so
    that every process normalises its loss by the same count (mmdet's reduce_mean)."""
    if not (dist.is_available() and dist.is_initialized()):
        return float(value)
    tensor = torch.tensor(float(value), device=device)
    dist.all_reduce(tensor.div_(dist.get_world_size()))
    return float(tensor)


@dataclass
class AuxPositives:
    """What a Co-DETR auxiliary head hands the query head: its priors (every anchor of an
    ATSS head; the sampled RoIs of an RoI head, positives first) with the assignment it made.

    Shape letters: B images, A priors per image, C feature channels, K classes.
    """
    coords: Tensor           # (B, A, 4) the priors, xyxy pixels of the network input
    labels: Tensor           # (B, A) assigned class; K = negative
    targets: Tensor          # (B, A, 4) assigned gt boxes, xyxy pixels (zeros for negatives)
    feats: Tensor | None     # (B, A, C) a feature per prior; None: the head's maps, per location
    kind: str                # 'atss' or 'rcnn', the official tags
