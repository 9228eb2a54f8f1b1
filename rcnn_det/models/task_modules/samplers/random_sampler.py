"""``RandomSampler``: a fixed-size random subset of positive and negative priors per image."""
from __future__ import annotations

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import TASK_UTILS

from ..assigners.assign_result import AssignResult
from .sampling_result import SamplingResult


def random_subset(mask: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Indices of ``min(k, mask.sum())`` random True entries of a 1-D bool ``mask``."""
    inds = mask.nonzero(as_tuple=False).squeeze(1)
    if inds.numel() <= k:
        return inds
    perm = torch.randperm(inds.numel(), device=inds.device, generator=generator)[:k]
    return inds[perm]


def sample_pos_neg(gt_inds: Tensor, num: int, pos_fraction: float, neg_pos_ub: float = -1,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """mmdet's RandomSampler on an assignment (N,) -> (positive indices, negative indices).

    Up to ``num * pos_fraction`` positives (gt_inds > 0); negatives (gt_inds == 0) fill the rest
    of ``num``, at most ``neg_pos_ub`` times the positives when ``neg_pos_ub >= 0``.
    """
    pos_inds = random_subset(gt_inds > 0, int(num * pos_fraction), generator)
    num_neg = num - pos_inds.numel()
    if neg_pos_ub >= 0:
        num_neg = min(num_neg, int(neg_pos_ub * max(1, pos_inds.numel())))
    neg_inds = random_subset(gt_inds == 0, num_neg, generator)
    return pos_inds, neg_inds


@TASK_UTILS.register_module()
class RandomSampler:
    """mmdetection's RandomSampler (same arguments)."""

    def __init__(self, num: int, pos_fraction: float, neg_pos_ub: float = -1,
                 add_gt_as_proposals: bool = True) -> None:
        self.num = num
        self.pos_fraction = pos_fraction
        self.neg_pos_ub = neg_pos_ub
        self.add_gt_as_proposals = add_gt_as_proposals

    def sample(self, assign_result: AssignResult, pred_instances: InstanceData,
               gt_instances: InstanceData, **kwargs) -> SamplingResult:
        """pred_instances.priors (N, 4) (or .bboxes); gt_instances.bboxes (G, 4), labels (G,).

        With ``add_gt_as_proposals`` the ground-truth boxes are prepended to the priors (and to
        ``assign_result``, in place, as mmdet does) so that every object has a perfect positive.
        """
        priors = pred_instances.priors if 'priors' in pred_instances else pred_instances.bboxes
        priors = priors[:, :4]
        gt_bboxes, gt_labels = gt_instances.bboxes, gt_instances.labels
        is_gt = priors.new_zeros(priors.shape[0], dtype=torch.bool)
        if self.add_gt_as_proposals and len(gt_bboxes) > 0:
            priors = torch.cat([gt_bboxes.to(priors.dtype), priors])
            assign_result.add_gt_(gt_labels)
            is_gt = torch.cat([is_gt.new_ones(len(gt_bboxes)), is_gt])
        pos_inds, neg_inds = sample_pos_neg(assign_result.gt_inds, self.num, self.pos_fraction,
                                            self.neg_pos_ub)
        pos_assigned = assign_result.gt_inds[pos_inds] - 1
        pos_gt_bboxes = (gt_bboxes[pos_assigned] if len(gt_bboxes) > 0
                         else gt_bboxes.new_zeros((0, 4)))
        return SamplingResult(
            pos_inds=pos_inds, neg_inds=neg_inds, pos_priors=priors[pos_inds],
            neg_priors=priors[neg_inds], pos_gt_bboxes=pos_gt_bboxes,
            pos_gt_labels=assign_result.labels[pos_inds], pos_assigned_gt_inds=pos_assigned,
            pos_is_gt=is_gt[pos_inds], num_gts=len(gt_bboxes),
            avg_factor=max(pos_inds.numel(), 1) + max(neg_inds.numel(), 1))
