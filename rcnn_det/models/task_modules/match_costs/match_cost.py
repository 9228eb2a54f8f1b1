"""Match costs of DETR's one-to-one (Hungarian) assignment, mmdetection 3.x's names and arguments.

Shape letters: Q predictions (queries), G ground-truth boxes, C classes.

Every cost is called as ``cost(pred_instances, gt_instances, img_meta)`` and returns a (Q, G)
matrix already multiplied by its ``weight``; ``HungarianAssigner`` sums them. Lower is better.
Boxes come in as xyxy pixels of the network input (``pred_instances.bboxes``,
``gt_instances.bboxes``); DETR heads convert their normalised cxcywh predictions before calling.

Mirrors mmdetection 3.x ``mmdet/models/task_modules/assigners/match_cost.py``:

- ``BBoxL1Cost`` divides both box sets by the image's own ``img_shape`` (w, h, w, h), not the
  padded batch shape; with ``box_format='xywh'`` both are compared as normalised (cx, cy, w, h).
- ``IoUCost`` is ``-IoU`` (or ``-GIoU``) in pixels; mmdet's ``1 -`` is omitted, as a constant
  does not change the matching. fp16 boxes are compared in fp32 and the cost cast back.
- ``FocalLossCost`` is the focal loss of calling the query positive for the ground truth's class
  minus that of calling it negative; ``binary_input=True`` is mmdet's mask variant: the same per
  pixel, summed over the pixels of each ground-truth mask and divided by the pixel count.
- ``ClassificationCost`` is ``-softmax(scores)[:, gt_label]``.
"""
from __future__ import annotations

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import TASK_UTILS
from rcnn_det.structures.bbox import bbox_overlaps, bbox_xyxy_to_cxcywh


class BaseMatchCost:
    """A (Q, G) cost scaled by ``weight``; subclasses define ``__call__``."""

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    def __call__(self, pred_instances: InstanceData, gt_instances: InstanceData,
                 img_meta: dict | None = None, **kwargs) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ', '.join(f'{k}={v!r}' for k, v in vars(self).items())
        return f'{type(self).__name__}({args})'


@TASK_UTILS.register_module()
class BBoxL1Cost(BaseMatchCost):
    """L1 distance between image-size-normalised boxes.

    Args:
        box_format: 'xyxy' compares normalised corners (DETR); 'xywh' compares normalised
            (cx, cy, w, h) (Deformable DETR, Co-DETR, Sparse R-CNN).
    """

    def __init__(self, box_format: str = 'xyxy', weight: float = 1.0) -> None:
        super().__init__(weight=weight)
        if box_format not in ('xyxy', 'xywh'):
            raise ValueError(f"BBoxL1Cost: box_format must be 'xyxy' or 'xywh', got {box_format!r}")
        self.box_format = box_format

    def __call__(self, pred_instances: InstanceData, gt_instances: InstanceData,
                 img_meta: dict | None = None, **kwargs) -> Tensor:
        """pred_instances.bboxes (Q, 4), gt_instances.bboxes (G, 4): xyxy pixels -> (Q, G)."""
        if img_meta is None or 'img_shape' not in img_meta:
            raise ValueError('BBoxL1Cost normalises boxes by the image size and needs '
                             "img_meta['img_shape'] = (h, w); got img_meta="
                             f'{None if img_meta is None else sorted(img_meta)}')
        pred_bboxes, gt_bboxes = pred_instances.bboxes, gt_instances.bboxes
        img_h, img_w = img_meta['img_shape'][:2]
        factor = gt_bboxes.new_tensor([img_w, img_h, img_w, img_h])
        pred_bboxes, gt_bboxes = pred_bboxes / factor, gt_bboxes / factor
        if self.box_format == 'xywh':
            pred_bboxes = bbox_xyxy_to_cxcywh(pred_bboxes)
            gt_bboxes = bbox_xyxy_to_cxcywh(gt_bboxes)
        return torch.cdist(pred_bboxes, gt_bboxes, p=1) * self.weight


@TASK_UTILS.register_module()
class IoUCost(BaseMatchCost):
    """``-IoU`` (``iou_mode='iou'``) or ``-GIoU`` (``'giou'``) of xyxy pixel boxes."""

    def __init__(self, iou_mode: str = 'giou', weight: float = 1.0) -> None:
        super().__init__(weight=weight)
        if iou_mode not in ('iou', 'iof', 'giou'):
            raise ValueError(f"IoUCost: iou_mode must be 'iou', 'iof' or 'giou', got {iou_mode!r}")
        self.iou_mode = iou_mode

    def __call__(self, pred_instances: InstanceData, gt_instances: InstanceData,
                 img_meta: dict | None = None, **kwargs) -> Tensor:
        """pred_instances.bboxes (Q, 4), gt_instances.bboxes (G, 4): xyxy pixels -> (Q, G)."""
        pred_bboxes, gt_bboxes = pred_instances.bboxes, gt_instances.bboxes
        dtype = pred_bboxes.dtype
        if dtype == torch.float16:     # areas of pixel boxes overflow fp16
            pred_bboxes, gt_bboxes = pred_bboxes.float(), gt_bboxes.float()
        overlaps = bbox_overlaps(pred_bboxes, gt_bboxes.to(pred_bboxes.dtype), mode=self.iou_mode)
        return -overlaps.to(dtype) * self.weight


@TASK_UTILS.register_module()
class FocalLossCost(BaseMatchCost):
    """Focal-loss classification cost on sigmoid scores.

    With p = sigmoid(logit) of the ground truth's class, the cost is
    ``alpha (1-p)^gamma (-log(p + eps)) - (1-alpha) p^gamma (-log(1-p + eps))``.

    Args:
        binary_input: False: ``pred_instances.scores`` (Q, C) logits against
            ``gt_instances.labels`` (G,). True (mask matching): ``pred_instances.masks``
            (Q, ...) logits against binary ``gt_instances.masks`` (G, ...), the per-pixel cost
            of each ground-truth pixel's value averaged over the pixels.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2, eps: float = 1e-12,
                 binary_input: bool = False, weight: float = 1.0) -> None:
        super().__init__(weight=weight)
        self.alpha = alpha
        self.gamma = gamma
        self.eps = eps
        self.binary_input = binary_input

    def _pos_neg(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Elementwise focal loss of calling each logit positive, and of calling it negative."""
        p = logits.sigmoid()
        pos = -(p + self.eps).log() * self.alpha * (1 - p).pow(self.gamma)
        neg = -(1 - p + self.eps).log() * (1 - self.alpha) * p.pow(self.gamma)
        return pos, neg

    def __call__(self, pred_instances: InstanceData, gt_instances: InstanceData,
                 img_meta: dict | None = None, **kwargs) -> Tensor:
        """-> (Q, G); see the class docstring for the inputs."""
        if self.binary_input:
            pred_masks = pred_instances.masks.flatten(1)                       # (Q, P) logits
            gt_masks = gt_instances.masks.flatten(1).to(pred_masks.dtype)      # (G, P) in {0, 1}
            pos, neg = self._pos_neg(pred_masks)
            cost = pos @ gt_masks.T + neg @ (1 - gt_masks).T                   # (Q, G)
            return cost / pred_masks.shape[1] * self.weight
        pos, neg = self._pos_neg(pred_instances.scores)                        # (Q, C)
        gt_labels = gt_instances.labels
        return (pos[:, gt_labels] - neg[:, gt_labels]) * self.weight


@TASK_UTILS.register_module()
class ClassificationCost(BaseMatchCost):
    """``-softmax(scores)[:, gt_label]``: pred_instances.scores (Q, C) logits, gt labels (G,)."""

    def __call__(self, pred_instances: InstanceData, gt_instances: InstanceData,
                 img_meta: dict | None = None, **kwargs) -> Tensor:
        probs = pred_instances.scores.softmax(-1)
        return -probs[:, gt_instances.labels] * self.weight
