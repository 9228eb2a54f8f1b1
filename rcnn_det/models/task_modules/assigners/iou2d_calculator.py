"""``BboxOverlaps2D``: the registered IoU calculator named by mmdet configs."""
from __future__ import annotations

from torch import Tensor

from rcnn_det.registry import TASK_UTILS
from rcnn_det.structures.bbox import bbox_overlaps


@TASK_UTILS.register_module()
class BboxOverlaps2D:
    """IoU / IoF / GIoU of xyxy boxes; a trailing score column (N, 5) is ignored."""

    def __init__(self, scale: float = 1.0, dtype: str | None = None) -> None:
        self.scale = scale
        self.dtype = dtype

    def __call__(self, bboxes1: Tensor, bboxes2: Tensor, mode: str = 'iou',
                 is_aligned: bool = False) -> Tensor:
        return bbox_overlaps(bboxes1[..., :4], bboxes2[..., :4], mode, is_aligned)
