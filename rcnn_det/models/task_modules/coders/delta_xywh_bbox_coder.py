"""``DeltaXYWHBBoxCoder``: boxes <-> normalised (dx, dy, dw, dh) offsets from reference boxes.

dx = (gx - px) / pw, dw = log(gw / pw), then (delta - means) / stds. torchvision's BoxCoder with
weights (wx, wy, ww, wh) is the same transform with stds = (1/wx, 1/wy, 1/ww, 1/wh).
Shapes: boxes and deltas (..., 4), any leading dimensions.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from rcnn_det.registry import TASK_UTILS
from rcnn_det.structures.bbox import clip_boxes

DEFAULT_WH_RATIO_CLIP = 16 / 1000  # dw, dh clamp at |log(16/1000)|, as mmdet and torchvision


def bbox2delta(proposals: Tensor, gt: Tensor, means: tuple[float, ...] = (0., 0., 0., 0.),
               stds: tuple[float, ...] = (1., 1., 1., 1.)) -> Tensor:
    proposals, gt = proposals.float(), gt.float()
    pw = proposals[..., 2] - proposals[..., 0]
    ph = proposals[..., 3] - proposals[..., 1]
    px = proposals[..., 0] + 0.5 * pw
    py = proposals[..., 1] + 0.5 * ph
    gw = gt[..., 2] - gt[..., 0]
    gh = gt[..., 3] - gt[..., 1]
    gx = gt[..., 0] + 0.5 * gw
    gy = gt[..., 1] + 0.5 * gh
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw),
                          torch.log(gh / ph)], dim=-1)
    return (deltas - deltas.new_tensor(means)) / deltas.new_tensor(stds)


def delta2bbox(rois: Tensor, deltas: Tensor, means: tuple[float, ...] = (0., 0., 0., 0.),
               stds: tuple[float, ...] = (1., 1., 1., 1.),
               max_shape: tuple[int, int] | Tensor | None = None,
               wh_ratio_clip: float = DEFAULT_WH_RATIO_CLIP, clip_border: bool = True,
               add_ctr_clamp: bool = False, ctr_clamp: float = 32) -> Tensor:
    """Apply ``deltas`` (..., 4k) to ``rois`` (..., 4); returns boxes shaped like ``deltas``."""
    # a plain int: an exported graph then reshapes to a fixed k, which also works for 0 boxes
    num_classes = int(deltas.shape[-1]) // 4
    deltas = deltas.reshape(*deltas.shape[:-1], num_classes, 4)         # (..., k, 4)
    deltas = deltas * deltas.new_tensor(stds) + deltas.new_tensor(means)
    rois = rois[..., None, :]                                           # (..., 1, 4)
    pw = rois[..., 2] - rois[..., 0]
    ph = rois[..., 3] - rois[..., 1]
    px = rois[..., 0] + 0.5 * pw
    py = rois[..., 1] + 0.5 * ph
    dxy_wh = torch.stack([pw, ph], dim=-1) * deltas[..., :2]
    max_ratio = abs(math.log(wh_ratio_clip))
    dwh = deltas[..., 2:]
    if add_ctr_clamp:
        dxy_wh = dxy_wh.clamp(-ctr_clamp, ctr_clamp)
        dwh = dwh.clamp(max=max_ratio)
    else:
        dwh = dwh.clamp(-max_ratio, max_ratio)
    centers = torch.stack([px, py], dim=-1) + dxy_wh
    sizes = torch.stack([pw, ph], dim=-1) * dwh.exp()
    boxes = torch.cat([centers - 0.5 * sizes, centers + 0.5 * sizes], dim=-1)
    if clip_border and max_shape is not None:
        boxes = clip_boxes(boxes, max_shape)
    return boxes.reshape(*boxes.shape[:-2], num_classes * 4)


@TASK_UTILS.register_module()
class DeltaXYWHBBoxCoder:
    """mmdetection's DeltaXYWHBBoxCoder (same arguments and numbers)."""

    def __init__(self, target_means: tuple[float, ...] = (0., 0., 0., 0.),
                 target_stds: tuple[float, ...] = (1., 1., 1., 1.), clip_border: bool = True,
                 add_ctr_clamp: bool = False, ctr_clamp: float = 32,
                 use_box_type: bool = False) -> None:
        self.means = tuple(float(m) for m in target_means)
        self.stds = tuple(float(s) for s in target_stds)
        self.clip_border = clip_border
        self.add_ctr_clamp = add_ctr_clamp
        self.ctr_clamp = ctr_clamp
        self.encode_size = 4

    def encode(self, bboxes: Tensor, gt_bboxes: Tensor) -> Tensor:
        """Offsets that take ``bboxes`` (..., 4) to ``gt_bboxes`` (..., 4)."""
        return bbox2delta(bboxes, gt_bboxes, self.means, self.stds)

    def decode(self, bboxes: Tensor, pred_bboxes: Tensor,
               max_shape: tuple[int, int] | Tensor | None = None,
               wh_ratio_clip: float = DEFAULT_WH_RATIO_CLIP) -> Tensor:
        """Boxes from ``bboxes`` (..., 4) moved by ``pred_bboxes`` (..., 4k), clipped to
        ``max_shape`` when ``clip_border``: (h, w), or a (B, 2) tensor of per-image (h, w) for
        boxes whose first dimension is B (see ``clip_boxes``)."""
        return delta2bbox(bboxes, pred_bboxes, self.means, self.stds, max_shape, wh_ratio_clip,
                          self.clip_border, self.add_ctr_clamp, self.ctr_clamp)
