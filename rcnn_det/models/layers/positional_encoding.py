"""``SinePositionalEncoding``: fixed sine/cosine embeddings of each pixel's (y, x) position
(DETR, Carion et al. 2020), mmdetection's arguments.

Shape letters: B images, H x W a feature map, F = ``num_feats`` frequencies per axis.
"""
from __future__ import annotations

import math

import torch
from mmengine.model import BaseModule
from torch import Tensor

from rcnn_det.registry import MODELS


@MODELS.register_module()
class SinePositionalEncoding(BaseModule):
    """forward(mask (B, H, W), True on padding) -> (B, 2F, H, W): F channels for y, then F for x.

    Along each axis the position is the count of valid pixels up to and including this one;
    with ``normalize`` it becomes (count + offset) / (valid extent + eps) * scale, so positions
    span the image, not the padded canvas. Channel pairs (2k, 2k + 1) hold sin and cos of
    position / temperature^(2k / F).
    """

    def __init__(self, num_feats: int, temperature: int = 10000, normalize: bool = False,
                 scale: float = 2 * math.pi, eps: float = 1e-6, offset: float = 0.,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_feats % 2:
            raise ValueError(f'SinePositionalEncoding: num_feats must be even, got {num_feats}')
        self.num_feats = num_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.eps = eps
        self.offset = offset

    def forward(self, mask: Tensor, input: Tensor | None = None) -> Tensor:
        valid = (~mask.bool()).float()
        y = valid.cumsum(1)                                             # (B, H, W)
        x = valid.cumsum(2)
        if self.normalize:
            y = (y + self.offset) / (y[:, -1:, :] + self.eps) * self.scale
            x = (x + self.offset) / (x[:, :, -1:] + self.eps) * self.scale
        k = torch.arange(self.num_feats, dtype=torch.float32, device=mask.device)
        freqs = self.temperature ** (2 * (k // 2) / self.num_feats)     # (F,)
        return torch.cat([sin_cos(y, freqs), sin_cos(x, freqs)], dim=-1).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f'num_feats={self.num_feats}, temperature={self.temperature}, '
                f'normalize={self.normalize}, scale={self.scale}, eps={self.eps}, '
                f'offset={self.offset}')


def sin_cos(pos: Tensor, freqs: Tensor) -> Tensor:
    """(...) positions, (F,) frequencies -> (..., F): sin at even channels, cos at odd ones."""
    angles = pos[..., None] / freqs
    return torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], -1).flatten(-2)
