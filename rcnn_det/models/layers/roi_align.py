"""``RoIAlign`` / ``RoIPool``: mmcv's config names and arguments over torchvision's kernels."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor
from torchvision.ops import roi_align, roi_pool

from rcnn_det.registry import MODELS


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


@MODELS.register_module()
class RoIAlign(nn.Module):
    """Bilinear RoI pooling (mmcv.ops.RoIAlign arguments).

    forward(input (B, C, H, W), rois (K, 5) = (image index, x1, y1, x2, y2)) -> (K, C, S, S)
    ``aligned=True`` shifts box coordinates by half a pixel (Detectron2 / mmcv default);
    torchvision's detection models use ``aligned=False``.
    """

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float = 1.0,
                 sampling_ratio: int = 0, pool_mode: str = 'avg', aligned: bool = True,
                 use_torchvision: bool = True) -> None:
        super().__init__()
        if pool_mode != 'avg':
            raise ValueError("RoIAlign: only pool_mode='avg' is available (torchvision kernel)")
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return roi_align(input, rois.to(input.dtype), self.output_size, self.spatial_scale,
                         self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f'output_size={self.output_size}, spatial_scale={self.spatial_scale}, '
                f'sampling_ratio={self.sampling_ratio}, aligned={self.aligned}')


@MODELS.register_module()
class RoIPool(nn.Module):
    """Max RoI pooling (Fast R-CNN), mmcv.ops.RoIPool arguments."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float = 1.0) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return roi_pool(input, rois.to(input.dtype), self.output_size, self.spatial_scale)
