"""Box math on plain tensors. Boxes are xyxy float pixels unless a name says otherwise.

Shape letters: N, M boxes; `...` any leading batch dimensions.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

EPS = 1e-6


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) -> (...,): area, zero for degenerate boxes."""
    widths = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    return widths * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def bbox_overlaps(boxes1: Tensor, boxes2: Tensor, mode: str = 'iou',
                  is_aligned: bool = False, eps: float = EPS) -> Tensor:
    """IoU, IoF (intersection over the first box's area) or GIoU of two box sets.

    Args:
        boxes1: (N, 4); boxes2: (M, 4), or (N, 4) when ``is_aligned``.
    Returns:
        (N, M) pairwise, or (N,) for aligned pairs.
    """
    if mode not in ('iou', 'iof', 'giou'):
        raise ValueError(f"bbox_overlaps: mode must be 'iou', 'iof' or 'giou', got {mode!r}")
    if not is_aligned and mode == 'iou' and boxes1.dtype != torch.float16:
        if boxes1.numel() == 0 or boxes2.numel() == 0:
            return boxes1.new_zeros((boxes1.shape[0], boxes2.shape[0]))
        # box_iou divides by the union unguarded: two empty boxes give 0/0, which is IoU 0.
        return box_iou(boxes1, boxes2).nan_to_num_(nan=0.0)
    if not is_aligned:
        boxes1, boxes2 = boxes1[:, None, :], boxes2[None, :, :]      # broadcast to (N, M, 4)
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    overlap = (rb - lt).clamp(min=0).prod(-1)
    area1, area2 = box_area(boxes1), box_area(boxes2)
    union = (area1 if mode == 'iof' else area1 + area2 - overlap).clamp(min=eps)
    ious = overlap / union
    if mode != 'giou':
        return ious
    enclose = (torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
               - torch.minimum(boxes1[..., :2], boxes2[..., :2])).clamp(min=0).prod(-1)
    enclose = enclose.clamp(min=eps)
    return ious - (enclose - union) / enclose


def bbox_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def bbox_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def bbox_flip(boxes: Tensor, img_shape: tuple[int, int], direction: str = 'horizontal') -> Tensor:
    """Mirror xyxy boxes inside an image of ``img_shape`` = (h, w)."""
    h, w = img_shape
    flipped = boxes.clone()
    if direction in ('horizontal', 'diagonal'):
        flipped[..., 0], flipped[..., 2] = w - boxes[..., 2], w - boxes[..., 0]
    if direction in ('vertical', 'diagonal'):
        flipped[..., 1], flipped[..., 3] = h - boxes[..., 3], h - boxes[..., 1]
    if direction not in ('horizontal', 'vertical', 'diagonal'):
        raise ValueError(f'bbox_flip: unknown direction {direction!r}')
    return flipped


def clip_boxes(boxes: Tensor, img_shape: tuple[int, int] | Tensor) -> Tensor:
    """Clamp xyxy boxes (..., 4) into an image of ``img_shape`` = (h, w), or, with a (B, 2)
    tensor of per-image (h, w), boxes (B, ..., 4) each into their own image (mmdet's batched
    ``max_shape``)."""
    if isinstance(img_shape, Tensor) and img_shape.dim() == 2:
        wh = img_shape.flip(-1).to(boxes.dtype).repeat(1, 2)                     # (B, 4)
        return torch.minimum(boxes.clamp(min=0),
                             wh.view(wh.shape[0], *[1] * (boxes.dim() - 2), 4))
    h, w = img_shape
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def scale_boxes(boxes: Tensor, scale_factor: tuple[float, float]) -> Tensor:
    """Multiply x by ``scale_factor[0]`` and y by ``scale_factor[1]`` (mmdet's (w, h) order)."""
    sx, sy = scale_factor
    return boxes * boxes.new_tensor([sx, sy, sx, sy])


def bbox2roi(bbox_list: list[Tensor]) -> Tensor:
    """Per-image boxes -> one (sum N_i, 5) tensor of (image index, x1, y1, x2, y2)."""
    rois = [torch.cat([b.new_full((b.shape[0], 1), i), b[:, :4]], dim=1)
            for i, b in enumerate(bbox_list)]
    return torch.cat(rois, dim=0)
