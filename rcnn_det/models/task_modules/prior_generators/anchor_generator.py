"""``AnchorGenerator``: the anchor boxes of every feature-map location, level by level.

Shape letters: L levels, A = len(ratios) * len(scales) anchors per location, H_l x W_l the size of
level l. Anchors of one level are ordered location-major, (H_l, W_l, A) flattened, which is the
order of a head's ``(B, A * k, H, W) -> (B, H, W, A, k)`` permute.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from rcnn_det.registry import TASK_UTILS


def base_anchors(base_size: float, scales: Tensor, ratios: Tensor, center: tuple[float, float],
                 scale_major: bool = True, round_coords: bool = False) -> Tensor:
    """(A, 4) xyxy anchors around ``center``; ratio = h / w, area = (base_size * scale)^2.

    ``round_coords`` rounds to whole pixels as torchvision's AnchorGenerator does.
    """
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    if scale_major:
        ws = (base_size * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (base_size * h_ratios[:, None] * scales[None, :]).reshape(-1)
    else:
        ws = (base_size * scales[:, None] * w_ratios[None, :]).reshape(-1)
        hs = (base_size * scales[:, None] * h_ratios[None, :]).reshape(-1)
    cx, cy = center
    anchors = torch.stack([cx - 0.5 * ws, cy - 0.5 * hs, cx + 0.5 * ws, cy + 0.5 * hs], dim=-1)
    return anchors.round() if round_coords else anchors


def grid_anchors(level_base: Tensor, featmap_size: tuple[int, int],
                 stride: tuple[float, float]) -> Tensor:
    """(A, 4) base anchors shifted to every location of an (H, W) map -> (H * W * A, 4)."""
    h, w = featmap_size
    shift_x = torch.arange(w, device=level_base.device, dtype=level_base.dtype) * stride[0]
    shift_y = torch.arange(h, device=level_base.device, dtype=level_base.dtype) * stride[1]
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing='ij')
    shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)    # (H*W, 1, 4)
    return (shifts + level_base[None]).reshape(-1, 4)                  # (H*W*A, 4)


@TASK_UTILS.register_module()
class AnchorGenerator:
    """mmdetection's AnchorGenerator (same arguments, same anchors, same order).

    Args:
        strides: stride of each level, an int or (stride_w, stride_h).
        ratios: height / width ratios, shared by all levels.
        scales: anchor side = base_size * scale; or give ``octave_base_scale`` and
            ``scales_per_octave`` (RetinaNet/ATSS style).
        base_sizes: defaults to the level's (smaller) stride.
        center_offset: anchor centre inside the stride cell, 0 = top-left corner (mmdet default).
        round_base_anchors: round base anchors to whole pixels (torchvision's behaviour).
    """

    def __init__(self, strides: list, ratios: list[float], scales: list[float] | None = None,
                 base_sizes: list[float] | None = None, scale_major: bool = True,
                 octave_base_scale: float | None = None, scales_per_octave: int | None = None,
                 centers: list[tuple[float, float]] | None = None, center_offset: float = 0.0,
                 round_base_anchors: bool = False, use_box_type: bool = False) -> None:
        self.strides = [s if isinstance(s, (tuple, list)) else (s, s) for s in strides]
        self.base_sizes = list(base_sizes) if base_sizes is not None else [
            min(s) for s in self.strides]
        if len(self.base_sizes) != len(self.strides):
            raise ValueError('AnchorGenerator: base_sizes and strides must have the same length, '
                             f'got {len(self.base_sizes)} and {len(self.strides)}')
        if (scales is None) == (octave_base_scale is None or scales_per_octave is None):
            raise ValueError('AnchorGenerator: give either scales, or octave_base_scale together '
                             'with scales_per_octave')
        if scales is None:
            scales = [octave_base_scale * 2 ** (i / scales_per_octave)
                      for i in range(scales_per_octave)]
        if centers is not None and len(centers) != len(self.strides):
            raise ValueError('AnchorGenerator: centers must give one (x, y) per level')
        self.scales = torch.tensor(scales, dtype=torch.float32)
        self.ratios = torch.tensor(ratios, dtype=torch.float32)
        self.scale_major = scale_major
        self.centers = centers
        self.center_offset = center_offset
        self.round_base_anchors = round_base_anchors
        self.base_anchors = [self._level_base_anchors(i) for i in range(len(self.strides))]
        # anchors per location of each level
        self.num_base_priors = [a.shape[0] for a in self.base_anchors]

    def _level_base_anchors(self, level: int) -> Tensor:
        base = self.base_sizes[level]
        center = (self.centers[level] if self.centers is not None
                  else (self.center_offset * base, self.center_offset * base))
        return base_anchors(base, self.scales, self.ratios, center, self.scale_major,
                            self.round_base_anchors)

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def grid_priors(self, featmap_sizes: list[tuple[int, int]], dtype: torch.dtype = torch.float32,
                    device: torch.device | str = 'cpu') -> list[Tensor]:
        """L tensors (H_l * W_l * A, 4) of xyxy anchors in input pixels."""
        if len(featmap_sizes) != len(self.strides):
            raise ValueError(f'AnchorGenerator has {len(self.strides)} levels (strides '
                             f'{self.strides}) but got {len(featmap_sizes)} feature maps')
        return [grid_anchors(self.base_anchors[i].to(device=device, dtype=dtype),
                             tuple(featmap_sizes[i]), self.strides[i])
                for i in range(len(self.strides))]

    def valid_flags(self, featmap_sizes: list[tuple[int, int]], pad_shape: tuple[int, int],
                    device: torch.device | str = 'cpu') -> list[Tensor]:
        """L bool tensors (H_l * W_l * A,): False for anchors centred on batch padding.

        ``pad_shape`` is the image's own (h, w) padded to the size divisor; locations beyond it
        exist only because another image of the batch is larger.
        """
        flags = []
        for (h, w), (stride_w, stride_h), num_base in zip(featmap_sizes, self.strides,
                                                         self.num_base_priors):
            valid_h = min(int(math.ceil(pad_shape[0] / stride_h)), h)
            valid_w = min(int(math.ceil(pad_shape[1] / stride_w)), w)
            valid = torch.zeros(h, w, dtype=torch.bool, device=device)
            valid[:valid_h, :valid_w] = True
            flags.append(valid[..., None].expand(h, w, num_base).reshape(-1))
        return flags

    def __repr__(self) -> str:
        return (f'AnchorGenerator(strides={self.strides}, ratios={self.ratios.tolist()}, '
                f'scales={self.scales.tolist()}, base_sizes={self.base_sizes})')
