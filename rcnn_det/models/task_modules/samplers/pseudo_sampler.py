"""``PseudoSampler``: keep every assigned prior (heads that train on all anchors or queries)."""
from __future__ import annotations

import torch
from mmengine.structures import InstanceData

from rcnn_det.registry import TASK_UTILS

from ..assigners import AssignResult
from .sampling_result import SamplingResult


@TASK_UTILS.register_module()
class PseudoSampler:
    """mmdetection's PseudoSampler: positives are the priors assigned a ground truth,
    negatives those assigned background; ignored priors (-1) are in neither. Losses over
    every prior are normalised by the positives only (``avg_factor``)."""

    def __init__(self, **kwargs) -> None:
        pass  # mmdet's accepts and ignores any argument

    def sample(self, assign_result: AssignResult, pred_instances: InstanceData,
               gt_instances: InstanceData, **kwargs) -> SamplingResult:
        priors = pred_instances.priors if 'priors' in pred_instances else pred_instances.bboxes
        gt_bboxes = gt_instances.bboxes
        pos_inds = torch.nonzero(assign_result.gt_inds > 0).squeeze(1)
        neg_inds = torch.nonzero(assign_result.gt_inds == 0).squeeze(1)
        pos_assigned = assign_result.gt_inds[pos_inds] - 1
        pos_gt_bboxes = (gt_bboxes[pos_assigned] if len(gt_bboxes) > 0
                         else gt_bboxes.new_zeros((0, 4)))
        return SamplingResult(
            pos_inds=pos_inds, neg_inds=neg_inds, pos_priors=priors[pos_inds, :4],
            neg_priors=priors[neg_inds, :4], pos_gt_bboxes=pos_gt_bboxes,
            pos_gt_labels=assign_result.labels[pos_inds], pos_assigned_gt_inds=pos_assigned,
            pos_is_gt=torch.zeros_like(pos_inds, dtype=torch.bool), num_gts=len(gt_bboxes),
            avg_factor=max(pos_inds.numel(), 1))
