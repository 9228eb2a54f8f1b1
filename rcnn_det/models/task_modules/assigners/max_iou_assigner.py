"""``MaxIoUAssigner``: each prior takes the ground truth it overlaps most, by IoU thresholds.

Shape letters: G ground-truth boxes, N priors (anchors or proposals).
"""
from __future__ import annotations

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import TASK_UTILS
from rcnn_det.structures.bbox import bbox_overlaps

from .assign_result import AssignResult


def max_iou_assign(ious: Tensor, pos_iou_thr: float, neg_iou_thr: float | tuple[float, float],
                   min_pos_iou: float = 0.0, match_low_quality: bool = True,
                   gt_max_assign_all: bool = True) -> Tensor:
    """Give every prior the index of its ground-truth box, mmdet's MaxIoUAssigner semantics.

    Args:
        ious: (G, N) IoU of each ground-truth box with each prior; -1 marks ignored priors.
        neg_iou_thr: a prior whose best IoU is in [0, thr) (or [lo, hi) for a tuple) is negative.
    Returns:
        (N,) int64: -1 ignored, 0 background, k > 0 matched to ground truth k - 1.
    """
    num_gts, num_priors = ious.shape
    gt_inds = ious.new_full((num_priors,), -1, dtype=torch.long)
    if num_gts == 0:
        return gt_inds.fill_(0)  # an image without objects: every prior is background
    if num_priors == 0:
        return gt_inds
    max_iou, best_gt = ious.max(dim=0)                                   # (N,), (N,)
    if isinstance(neg_iou_thr, (tuple, list)):
        gt_inds[(max_iou >= neg_iou_thr[0]) & (max_iou < neg_iou_thr[1])] = 0
    else:
        gt_inds[(max_iou >= 0) & (max_iou < neg_iou_thr)] = 0
    is_pos = max_iou >= pos_iou_thr
    gt_inds[is_pos] = best_gt[is_pos] + 1
    if not match_low_quality:
        return gt_inds
    # A ground truth whose best prior misses pos_iou_thr still claims that prior, or small objects
    # get no positive at all. mmdet does this in a loop over ground truths in which later boxes
    # overwrite earlier ones, so the highest index wins. torchvision's Matcher instead keeps the
    # prior's own best box: do not "fix" this towards torchvision.
    best_iou_per_gt, best_prior = ious.max(dim=1)                        # (G,), (G,)
    one_based = torch.arange(1, num_gts + 1, device=ious.device)
    claims = best_iou_per_gt >= min_pos_iou                             # (G,)
    if gt_max_assign_all:
        is_best = (ious == best_iou_per_gt[:, None]) & claims[:, None]   # (G, N), all ties
        rescued = (is_best * one_based[:, None]).amax(dim=0)             # (N,), 0 = none
    else:
        rescued = torch.zeros_like(gt_inds).scatter_reduce(
            0, best_prior[claims], one_based[claims], reduce='amax')
    return torch.where(rescued > 0, rescued, gt_inds)


@TASK_UTILS.register_module()
class MaxIoUAssigner:
    """mmdetection's MaxIoUAssigner (same arguments and results), vectorised."""

    def __init__(self, pos_iou_thr: float, neg_iou_thr: float | tuple[float, float],
                 min_pos_iou: float = 0.0, gt_max_assign_all: bool = True,
                 ignore_iof_thr: float = -1, ignore_wrt_candidates: bool = True,
                 match_low_quality: bool = True, gpu_assign_thr: float = -1,
                 iou_calculator: dict | None = None) -> None:
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.gt_max_assign_all = gt_max_assign_all
        self.ignore_iof_thr = ignore_iof_thr
        self.ignore_wrt_candidates = ignore_wrt_candidates
        self.match_low_quality = match_low_quality
        if iou_calculator not in (None, dict(type='BboxOverlaps2D')):
            raise ValueError('MaxIoUAssigner: only iou_calculator=dict(type="BboxOverlaps2D") '
                             f'is supported, got {iou_calculator}')

    def assign(self, pred_instances: InstanceData, gt_instances: InstanceData,
               gt_instances_ignore: InstanceData | None = None, **kwargs) -> AssignResult:
        """pred_instances.priors (N, 4); gt_instances.bboxes (G, 4), labels (G,)."""
        priors, gt_bboxes = pred_instances.priors, gt_instances.bboxes
        gt_labels = gt_instances.labels
        ious = bbox_overlaps(gt_bboxes, priors[:, :4])                    # (G, N)
        if (self.ignore_iof_thr > 0 and gt_instances_ignore is not None
                and len(gt_instances_ignore) > 0 and ious.numel() > 0):
            ignored = gt_instances_ignore.bboxes
            if self.ignore_wrt_candidates:
                iof = bbox_overlaps(priors[:, :4], ignored, mode='iof').max(dim=1).values
            else:
                iof = bbox_overlaps(ignored, priors[:, :4], mode='iof').max(dim=0).values
            ious[:, iof > self.ignore_iof_thr] = -1
        gt_inds = max_iou_assign(ious, self.pos_iou_thr, self.neg_iou_thr, self.min_pos_iou,
                                 self.match_low_quality, self.gt_max_assign_all)
        max_overlaps = (ious.max(dim=0).values if ious.shape[0] > 0
                        else ious.new_zeros(ious.shape[1]))
        labels = gt_inds.new_full(gt_inds.shape, -1)
        pos = gt_inds > 0
        labels[pos] = gt_labels[gt_inds[pos] - 1].long()
        return AssignResult(len(gt_bboxes), gt_inds, max_overlaps, labels)
