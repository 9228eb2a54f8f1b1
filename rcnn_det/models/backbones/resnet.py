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
import torch.nn.functional as F
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmengine.model import BaseModule
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from rcnn_det.registry import MODELS

from .torchvision_weights import backbone_init_cfg, resolve_pretrained_init_cfg


def frozen_bn_affine(norm: _BatchNorm) -> tuple[Tensor, Tensor]:
    """A BatchNorm with frozen statistics as ``x * scale + shift``: per-channel (C,) tensors,
    differentiable in the norm's weight and bias."""
    scale = norm.running_var.add(norm.eps).rsqrt()
    shift = -norm.running_mean * scale
    if norm.affine:
        scale = scale * norm.weight
        shift = shift * norm.weight + norm.bias
    return scale, shift


def conv_norm(conv: nn.Module, norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(conv(x))``, with a BatchNorm in eval mode folded into the convolution.

    A frozen-statistics BatchNorm (``norm_eval=True`` while training, or inference) is the affine
    map ``y * scale + shift``; it is applied as one convolution with weight ``W * scale`` and
    bias ``shift``. The result equals the two modules' up to float rounding, gradients reach the
    conv weight and the norm's weight and bias as before, and the full-size pass over the
    activations that the norm would cost, forward and backward, is gone. (A ResNet-50 FPN
    training step at 800 x 1344 on CPU spends seconds in those passes.) The norm's own
    ``forward`` (and its hooks) is then not called. Other norms, and BatchNorm in training mode,
    run as ``norm(conv(x))``.
    """
    if (type(conv) is not nn.Conv2d or conv.bias is not None or conv.padding_mode != 'zeros'
            or not isinstance(norm, _BatchNorm) or norm.training or norm.running_var is None):
        return norm(conv(x))
    scale, shift = frozen_bn_affine(norm)
    weight = conv.weight * scale.to(conv.weight.dtype)[:, None, None, None]
    return F.conv2d(x, weight, shift.to(conv.weight.dtype), conv.stride, conv.padding,
                    conv.dilation, conv.groups)


def freeze_batch_norm_statistics(module: nn.Module) -> None:
    """Every BatchNorm in ``module`` to eval mode (``norm_eval``): with 1-2 images per GPU,
    batch statistics are too noisy, so the running ones are used and kept."""
    for child in module.modules():
        if isinstance(child, _BatchNorm):
            child.eval()


class ConvNormSequential(nn.Sequential):
    """A block's shortcut: optional pooling layers, then a conv and its norm (keys
    ``downsample.0``, ``downsample.1``, as mmdetection and torchvision), run with
    ``conv_norm``."""

    def forward(self, x: Tensor) -> Tensor:
        *pre, conv, norm = self
        for layer in pre:
            x = layer(x)
        return conv_norm(conv, norm, x)


def run_block(block: BasicBlock | Bottleneck, x: Tensor) -> Tensor:
    """``block._inner_forward(x)``; with the block's ``with_cp`` (mmdetection's option), while
    training with gradients recorded, under ``torch.utils.checkpoint``: the block's activations
    are not kept but recomputed during backward, trading compute for memory. Values and
    gradients are the same. Non-reentrant checkpointing, so parameters get gradients even when
    ``x`` needs none. A BatchNorm in training mode (``norm_eval=False``) updates its running
    statistics again in the recomputation, as in mmdetection."""
    if block.with_cp and block.training and torch.is_grad_enabled():
        return checkpoint(block._inner_forward, x, use_reentrant=False)
    return block._inner_forward(x)


class BasicBlock(BaseModule):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, style: str = 'pytorch',
                 conv_cfg: dict | None = None, norm_cfg: dict = dict(type='BN'),
                 with_cp: bool = False) -> None:
        super().__init__()
        self.with_cp = with_cp
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
        return run_block(self, x)

    def _inner_forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(conv_norm(self.conv1, getattr(self, self.norm1_name), x))
        out = conv_norm(self.conv2, getattr(self, self.norm2_name), out)
        return self.relu(out + identity)


class Bottleneck(BaseModule):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, style: str = 'pytorch',
                 conv_cfg: dict | None = None, norm_cfg: dict = dict(type='BN'),
                 with_cp: bool = False) -> None:
        super().__init__()
        self.with_cp = with_cp
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
        return run_block(self, x)

    def _inner_forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(conv_norm(self.conv1, getattr(self, self.norm1_name), x))
        out = self.relu(conv_norm(self.conv2, getattr(self, self.norm2_name), out))
        out = conv_norm(self.conv3, getattr(self, self.norm3_name), out)
        return self.relu(out + identity)


def make_res_layer(block: type, inplanes: int, planes: int, num_blocks: int, stride: int,
                   dilation: int, style: str, avg_down: bool, conv_cfg: dict | None,
                   norm_cfg: dict, with_cp: bool = False) -> nn.Sequential:
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
        downsample = ConvNormSequential(*layers)
    blocks = [block(inplanes, planes, stride, dilation, downsample, style, conv_cfg, norm_cfg,
                    with_cp=with_cp)]
    blocks += [block(planes * block.expansion, planes, 1, dilation, None, style, conv_cfg,
                     norm_cfg, with_cp=with_cp) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


@MODELS.register_module()
class ResNet(BaseModule):
    """mmdetection's ResNet (arguments, defaults, freezing and norm_eval behaviour).

    Pretrained weights: ``init_cfg=dict(type='Pretrained', checkpoint=...)`` takes a torchvision
    ResNet state dict file, or mmdetection's ``'torchvision://resnet50'``, which is read from
    ``<torch.hub.get_dir()>/checkpoints/resnet50-0676ba61.pth`` (an error names that path when
    the file is missing; nothing is downloaded). See ``torchvision_weights.py``.

    ``with_cp=True`` runs each residual block under ``torch.utils.checkpoint`` while training
    (``run_block``): less activation memory, one more forward pass of each block in backward.
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
        if dcn is not None or plugins is not None or deep_stem:
            raise NotImplementedError('ResNet: dcn, plugins and deep_stem are not supported by '
                                      'rcnn_det')
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
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, stem_channels, postfix=1)
        self.add_module(self.norm1_name, norm1)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.res_layers = []
        inplanes = stem_channels
        for i in range(num_stages):
            planes = base_channels * 2 ** i
            layer = make_res_layer(block, inplanes, planes, stage_blocks[i], strides[i],
                                   dilations[i], style, avg_down, conv_cfg, norm_cfg, with_cp)
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
        x = self.maxpool(self.relu(conv_norm(self.conv1, getattr(self, self.norm1_name), x)))
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
            freeze_batch_norm_statistics(self)
        return self
