"""``VGG``: the VGG-11/13/16/19 convolutional features (mmcv's VGG), torchvision's weight layout.

The layers live in one ``nn.Sequential`` named ``features`` and are numbered as torchvision numbers
them (conv, [norm,] ReLU, ..., max-pool), so a torchvision ``vgg16`` (or, with
``norm_cfg=dict(type='BN')``, ``vgg16_bn``) state dict loads as it is; its ``classifier.*``
tensors (fc6, fc7, fc8) are skipped with a log line.
forward(x (B, 3, H, W)) -> tuple of stage outputs ``out_indices``; stage i ends with a 2x2 max-pool
(stride 2^(i+1)) and has base_channels * 2^min(i, 3) channels: 64, 128, 256, 512, 512 for VGG16.
Without the last pool (``with_last_pool=False``) stage 4 ends at conv5_3 + ReLU, stride 16: the
Faster R-CNN VGG16 feature map.
"""
from __future__ import annotations

import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import Tensor

from rcnn_det.registry import MODELS

from .resnet import freeze_batch_norm_statistics
from .torchvision_weights import backbone_init_cfg

# The fully connected layers of torchvision's VGG: not part of a detection backbone.
CLASSIFIER_PREFIX = 'classifier.'


def make_vgg_stage(in_channels: int, channels: int, num_convs: int, dilation: int,
                   norm_cfg: dict | None, ceil_mode: bool) -> list[nn.Module]:
    """One stage as a flat list: ``num_convs`` x (3x3 conv, [norm,] ReLU), then a 2x2 max-pool."""
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers.append(nn.Conv2d(in_channels if i == 0 else channels, channels, 3,
                                padding=dilation, dilation=dilation))
        if norm_cfg is not None:
            layers.append(build_norm_layer(norm_cfg, channels)[1])
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=ceil_mode))
    return layers


@MODELS.register_module()
class VGG(BaseModule):
    """mmcv's VGG backbone (arguments and stage semantics), always returning a tuple.

    Args:
        depth: 11, 13, 16 or 19.
        base_channels: width of stage 0; stage i has base_channels * 2^min(i, 3) channels. 64 is
            VGG; a smaller value keeps the depth and the layer layout but is not ImageNet VGG.
        num_stages: 1 to 5 stages are built.
        dilations: dilation (and padding) of the 3x3 convs of each stage.
        out_indices: the stages whose outputs are returned.
        frozen_stages: stages 0 .. frozen_stages - 1 are frozen (eval mode, no gradient); -1 none.
        norm_cfg: a norm layer after every conv (torchvision's ``vgg*_bn``), None for plain VGG
            (mmcv's ``with_bn=False``).
        norm_eval: keep the norm layers in eval mode while training (mmcv's ``bn_eval``).
        ceil_mode: the max-pools round their output size up (mmdet's SSD) instead of down.
        with_last_pool: False drops the last stage's max-pool (Faster R-CNN: stride 16).
        pretrained: deprecated, the checkpoint path for ``init_cfg=dict(type='Pretrained')``.

    Pretrained weights: ``init_cfg=dict(type='Pretrained', checkpoint='path/to/vgg16.pth')``
    accepts a torchvision VGG state dict file.
    """

    arch_settings = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3),
                     19: (2, 2, 4, 4, 4)}

    def __init__(self, depth: int, in_channels: int = 3, base_channels: int = 64,
                 num_stages: int = 5, dilations: tuple[int, ...] = (1, 1, 1, 1, 1),
                 out_indices: tuple[int, ...] = (0, 1, 2, 3, 4), frozen_stages: int = -1,
                 norm_cfg: dict | None = None, norm_eval: bool = True, ceil_mode: bool = False,
                 with_last_pool: bool = True, pretrained: str | None = None,
                 init_cfg=None) -> None:
        if depth not in self.arch_settings:
            raise KeyError(f'VGG: depth must be one of {sorted(self.arch_settings)}, got {depth}')
        if not 1 <= num_stages <= 5 or len(dilations) < num_stages:
            raise ValueError(f'VGG: need 1 <= num_stages <= 5 and one dilation per stage, got '
                             f'num_stages={num_stages}, dilations={dilations}')
        if not out_indices or max(out_indices) >= num_stages:
            raise ValueError(f'VGG: out_indices must name stages below num_stages={num_stages}, '
                             f'got {out_indices}')
        super().__init__(init_cfg=backbone_init_cfg('VGG', pretrained, init_cfg))
        self.depth = depth
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        layers: list[nn.Module] = []
        # stage_ranges[i] = (first, last + 1) index into ``features`` of stage i's layers
        self.stage_ranges: list[tuple[int, int]] = []
        channels = in_channels
        for i, num_convs in enumerate(self.arch_settings[depth][:num_stages]):
            width = base_channels * 2 ** min(i, 3)
            stage = make_vgg_stage(channels, width, num_convs, dilations[i], norm_cfg, ceil_mode)
            if i == num_stages - 1 and not with_last_pool:
                stage.pop()
            self.stage_ranges.append((len(layers), len(layers) + len(stage)))
            layers += stage
            channels = width
        self.features = nn.Sequential(*layers)
        self.feat_dim = channels
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        for first, last in self.stage_ranges[:max(self.frozen_stages, 0)]:
            for module in self.features[first:last]:
                module.eval()
                for param in module.parameters():
                    param.requires_grad = False

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        outs = []
        for i, (first, last) in enumerate(self.stage_ranges):
            x = self.features[first:last](x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def train(self, mode: bool = True) -> VGG:
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            freeze_batch_norm_statistics(self)
        return self

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # A torchvision VGG file also holds the classifier (fc6, fc7, fc8), which this backbone
        # does not have: drop it here, with a log line, instead of a warning about unexpected keys.
        skipped = [k for k in state_dict if k.startswith(prefix + CLASSIFIER_PREFIX)]
        if skipped:
            for key in skipped:
                del state_dict[key]
            print_log(f'VGG: skipped {len(skipped)} classifier tensors of the checkpoint '
                      f'({", ".join(skipped)}): the backbone keeps only the convolutional '
                      'features', logger='current')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
