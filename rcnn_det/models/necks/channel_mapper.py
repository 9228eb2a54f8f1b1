"""``ChannelMapper``: one conv per backbone level to a common width, plus stride-2 extra levels
(the neck of Deformable DETR and Co-DETR), mmdetection's arguments and keys.

forward(inputs: L maps (B, in_channels[l], H_l, W_l)) -> ``num_outs`` maps (B, out_channels,
H_l, W_l); each extra level is a stride-2 3x3 conv of the previous one (the first extra one of
the last INPUT map).
"""
from __future__ import annotations

import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from torch import Tensor

from rcnn_det.registry import MODELS


@MODELS.register_module()
class ChannelMapper(BaseModule):
    """mmdetection's ChannelMapper: ``convs.{l}`` map level l, ``extra_convs.{k}`` add levels."""

    def __init__(self, in_channels: list[int], out_channels: int, kernel_size: int = 3,
                 conv_cfg: dict | None = None, norm_cfg: dict | None = None,
                 act_cfg: dict | None = dict(type='ReLU'), bias: bool | str = 'auto',
                 num_outs: int | None = None,
                 init_cfg=dict(type='Xavier', layer='Conv2d', distribution='uniform')) -> None:
        super().__init__(init_cfg=init_cfg)
        in_channels = list(in_channels)
        num_outs = len(in_channels) if num_outs is None else num_outs
        if num_outs < len(in_channels):
            raise ValueError(f'ChannelMapper: num_outs ({num_outs}) must be at least the number '
                             f'of inputs ({len(in_channels)})')
        self.in_channels = in_channels
        self.num_outs = num_outs

        def conv(cin: int, size: int, stride: int = 1) -> ConvModule:
            return ConvModule(cin, out_channels, size, stride=stride, padding=(size - 1) // 2,
                              conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg, bias=bias)
        self.convs = nn.ModuleList(conv(c, kernel_size) for c in in_channels)
        num_extra = num_outs - len(in_channels)
        self.extra_convs = nn.ModuleList(
            conv(in_channels[-1] if i == 0 else out_channels, 3, stride=2)
            for i in range(num_extra)) if num_extra else None

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        if len(inputs) != len(self.convs):
            raise ValueError(f'ChannelMapper expects {len(self.convs)} input maps '
                             f'(in_channels={self.in_channels}), got {len(inputs)}')
        outs = [conv(x) for conv, x in zip(self.convs, inputs)]
        for i, conv in enumerate(self.extra_convs or []):
            outs.append(conv(inputs[-1] if i == 0 else outs[-1]))
        return tuple(outs)
