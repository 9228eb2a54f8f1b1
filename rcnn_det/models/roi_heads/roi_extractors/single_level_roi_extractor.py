"""``SingleRoIExtractor``: pool each RoI from the one FPN level that matches its size."""
from __future__ import annotations

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from torch import Tensor

from rcnn_det.registry import MODELS


def map_roi_levels(rois: Tensor, num_levels: int, finest_scale: float = 56) -> Tensor:
    """(K, 5) RoIs -> (K,) level index, FPN paper eq. 1 as mmdetection writes it.

    level = floor(log2(sqrt(w * h) / finest_scale + 1e-6)), clamped to [0, num_levels - 1]:
    scale < 112 -> 0, [112, 224) -> 1, [224, 448) -> 2, >= 448 -> 3.
    """
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


@MODELS.register_module()
class SingleRoIExtractor(BaseModule):
    """mmdetection's SingleRoIExtractor.

    forward(feats, rois) -> (K, out_channels, S, S)
        feats: L maps (B, C, H_l, W_l) with strides ``featmap_strides``
        rois:  (K, 5) (image index, x1, y1, x2, y2) in input pixels
    """

    def __init__(self, roi_layer: dict, out_channels: int, featmap_strides: list[int],
                 finest_scale: int = 56, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.roi_layers = nn.ModuleList(
            [MODELS.build(dict(roi_layer, spatial_scale=1 / s)) for s in featmap_strides])
        self.out_channels = out_channels
        self.featmap_strides = list(featmap_strides)
        self.finest_scale = finest_scale

    @property
    def num_inputs(self) -> int:
        return len(self.featmap_strides)

    def forward(self, feats: tuple[Tensor, ...], rois: Tensor,
                roi_scale_factor: float | None = None) -> Tensor:
        out_size = self.roi_layers[0].output_size
        if len(feats) == 1:
            return self.roi_layers[0](feats[0], rois)
        if roi_scale_factor is not None:
            raise NotImplementedError('SingleRoIExtractor: roi_scale_factor is not supported')
        roi_feats = feats[0].new_zeros(rois.shape[0], self.out_channels, *out_size)
        levels = map_roi_levels(rois, self.num_inputs, self.finest_scale)
        unused = []
        for level in range(self.num_inputs):
            inds = (levels == level).nonzero(as_tuple=False).squeeze(1)
            if inds.numel() > 0:
                roi_feats[inds] = self.roi_layers[level](feats[level], rois[inds]).to(
                    roi_feats.dtype)
            else:
                unused.append(feats[level])
        if unused:
            # A zero that keeps the levels without RoIs in the graph: DDP must see every
            # parameter used in every iteration.
            roi_feats = roi_feats + sum(f.sum() for f in unused) * 0
        return roi_feats
