"""``ResNet``: mmdetection's ResNet backbone (18/34/50/101/152), torchvision's weight layout.

State-dict keys equal torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer1.0.downsample.0``), so torchvision ImageNet weights load as they are (``fc.*`` unused),
from a file or, by mmdetection's name ``torchvision://resnet50``, from the torch hub cache.
forward(x (B, 3, H, W)) -> tuple of stage outputs ``out_indices``; stage i has stride 2^(i+2)
and 64 * 2^i (BasicBlock) or 256 * 2^i (Bottleneck) channels, times base_channels / 64.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmengine.model import BaseModule
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from rcnn_det.registry import MODELS

from .torchvision_weights import backbone_init_cfg, resolve_pretrained_init_cfg


class EvalAffineBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same state, same results up to float rounding) that, in eval mode
    while gradients are recorded (training with ``norm_eval=True``, torchvision's frozen BN),
    applies its running statistics as one per-channel affine map, ``x * scale + shift``.

    On CPU the backward pass of that map costs far less than PyTorch's batch-norm backward
    (a ResNet-50 FPN training step at 800 x 1344: 12.0 s instead of 14.4 s).
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training or not torch.is_grad_enabled() or self.running_var is None:
            return super().forward(x)
        scale = self.running_var.add(self.eps).rsqrt()
        shift = -self.running_mean * scale
        if self.affine:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        return x * scale[:, None, None] + shift[:, None, None]


def fast_norm_cfg(norm_cfg: dict) -> dict:
    """mmcv's 'BN' as ``EvalAffineBatchNorm2d``; other norms unchanged."""
    if norm_cfg.get('type') in ('BN', 'BN2d'):
        return dict(norm_cfg, type=EvalAffineBatchNorm2d)
    return norm_cfg


class BasicBlock(BaseModule):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, style: str = 'pytorch',
                 conv_cfg: dict | None = None, norm_cfg: dict = dict(type='BN')) -> None:
        super().__init__()
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, planes, postfix=1)
        self.norm2_name, norm2 = build_norm_layer(norm_cfg, planes, postfix=2)
        self.conv1 = build_conv_layer(conv_cfg, inplanes, planes, 3, stride=stride,
                                      padding=dilation, dilation=dilation, bias=False)
        self.add_module(self.norm1_name, norm1)
        self.conv2 = build_conv_layer(conv_cfg, planes, planes, 3, padding=1, bias=False)
        self.add_module(self.norm2_name, norm2)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.Module:
        return getattr(self, self.norm2_name)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(getattr(self, self.norm1_name)(self.conv1(x)))
        out = getattr(self, self.norm2_name)(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(BaseModule):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, style: str = 'pytorch',
                 conv_cfg: dict | None = None, norm_cfg: dict = dict(type='BN')) -> None:
        super().__init__()
        if style not in ('pytorch', 'caffe'):
            raise ValueError(f"ResNet style must be 'pytorch' or 'caffe', got {style!r}")
        # 'pytorch' strides in the 3x3 conv, 'caffe' in the first 1x1 conv.
        stride1, stride2 = (1, stride) if style == 'pytorch' else (stride, 1)
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, planes, postfix=1)
        self.norm2_name, norm2 = build_norm_layer(norm_cfg, planes, postfix=2)
        self.norm3_name, norm3 = build_norm_layer(norm_cfg, planes * self.expansion, postfix=3)
        self.conv1 = build_conv_layer(conv_cfg, inplanes, planes, 1, stride=stride1, bias=False)
        self.add_module(self.norm1_name, norm1)
        self.conv2 = build_conv_layer(conv_cfg, planes, planes, 3, stride=stride2,
                                      padding=dilation, dilation=dilation, bias=False)
        self.add_module(self.norm2_name, norm2)
        self.conv3 = build_conv_layer(conv_cfg, planes, planes * self.expansion, 1, bias=False)
        self.add_module(self.norm3_name, norm3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.Module:
        return getattr(self, self.norm3_name)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(getattr(self, self.norm1_name)(self.conv1(x)))
        out = self.relu(getattr(self, self.norm2_name)(self.conv2(out)))
        out = getattr(self, self.norm3_name)(self.conv3(out))
        return self.relu(out + identity)


def make_res_layer(block: type, inplanes: int, planes: int, num_blocks: int, stride: int,
                   dilation: int, style: str, avg_down: bool, conv_cfg: dict | None,
                   norm_cfg: dict) -> nn.Sequential:
    """One ResNet stage: ``num_blocks`` blocks, the first one changing stride and width."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        layers = []
        conv_stride = stride
        if avg_down and stride != 1:
            # ResNet-D: average-pool then a stride-1 conv, instead of a strided 1x1 conv.
            conv_stride = 1
            layers.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False))
        layers += [build_conv_layer(conv_cfg, inplanes, planes * block.expansion, 1,
                                    stride=conv_stride, bias=False),
                   build_norm_layer(norm_cfg, planes * block.expansion)[1]]
        downsample = nn.Sequential(*layers)
    blocks = [block(inplanes, planes, stride, dilation, downsample, style, conv_cfg, norm_cfg)]
    blocks += [block(planes * block.expansion, planes, 1, dilation, None, style, conv_cfg,
                     norm_cfg) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


@MODELS.register_module()
class ResNet(BaseModule):
    """mmdetection's ResNet (arguments, defaults, freezing and norm_eval behaviour).

    Pretrained weights: ``init_cfg=dict(type='Pretrained', checkpoint=...)`` takes a torchvision
    ResNet state dict file, or mmdetection's ``'torchvision://resnet50'``, which is read from
    ``<torch.hub.get_dir()>/checkpoints/resnet50-0676ba61.pth`` (an error names that path when
    the file is missing; nothing is downloaded). See ``torchvision_weights.py``.
    """

    arch_settings = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
                     50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
                     152: (Bottleneck, (3, 8, 36, 3))}

    def __init__(self, depth: int, in_channels: int = 3, stem_channels: int | None = None,
                 base_channels: int = 64, num_stages: int = 4,
                 strides: tuple[int, ...] = (1, 2, 2, 2),
                 dilations: tuple[int, ...] = (1, 1, 1, 1),
                 out_indices: tuple[int, ...] = (0, 1, 2, 3), style: str = 'pytorch',
                 deep_stem: bool = False, avg_down: bool = False, frozen_stages: int = -1,
                 conv_cfg: dict | None = None,
                 norm_cfg: dict = dict(type='BN', requires_grad=True), norm_eval: bool = True,
                 dcn=None, stage_with_dcn=(False, False, False, False), plugins=None,
                 with_cp: bool = False, zero_init_residual: bool = True,
                 pretrained: str | None = None, init_cfg=None) -> None:
        if depth not in self.arch_settings:
            raise KeyError(f'ResNet: depth must be one of {sorted(self.arch_settings)}, '
                           f'got {depth}')
        if dcn is not None or plugins is not None or with_cp or deep_stem:
            raise NotImplementedError('ResNet: dcn, plugins, with_cp and deep_stem are not '
                                      'supported by rcnn_det')
        if not 1 <= num_stages <= 4 or max(out_indices) >= num_stages:
            raise ValueError(f'ResNet: need 1 <= num_stages <= 4 and out_indices < num_stages, '
                             f'got num_stages={num_stages}, out_indices={out_indices}')
        super().__init__(init_cfg=backbone_init_cfg('ResNet', pretrained, init_cfg))
        self.depth = depth
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.zero_init_residual = zero_init_residual
        block, stage_blocks = self.arch_settings[depth]
        stem_channels = stem_channels or base_channels
        self.conv1 = build_conv_layer(conv_cfg, in_channels, stem_channels, 7, stride=2,
                                      padding=3, bias=False)
        norm_cfg = fast_norm_cfg(norm_cfg)
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, stem_channels, postfix=1)
        self.add_module(self.norm1_name, norm1)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.res_layers = []
        inplanes = stem_channels
        for i in range(num_stages):
            planes = base_channels * 2 ** i
            layer = make_res_layer(block, inplanes, planes, stage_blocks[i], strides[i],
                                   dilations[i], style, avg_down, conv_cfg, norm_cfg)
            inplanes = planes * block.expansion
            self.add_module(f'layer{i + 1}', layer)
            self.res_layers.append(f'layer{i + 1}')
        self.feat_dim = inplanes
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.conv1, getattr(self, self.norm1_name)]
        frozen += [getattr(self, f'layer{i}') for i in range(1, self.frozen_stages + 1)]
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def init_weights(self) -> None:
        # mmengine's loader would download a 'torchvision://' checkpoint; resolve it to the
        # local torch hub cache first (or fail, naming the expected file).
        self.init_cfg = resolve_pretrained_init_cfg(self.init_cfg, 'ResNet.init_cfg')
        super().init_weights()
        cfgs = [self.init_cfg] if isinstance(self.init_cfg, dict) else self.init_cfg or []
        is_pretrained = any(cfg.get('type') == 'Pretrained' for cfg in cfgs)
        if self.zero_init_residual and not is_pretrained:
            # Each residual block starts as the identity (Goyal et al., 2017), as mmdet does.
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.constant_(module.last_norm.weight, 0)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = self.maxpool(self.relu(getattr(self, self.norm1_name)(self.conv1(x))))
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            # Frozen statistics: with 1-2 images per GPU, batch statistics are too noisy.
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self
