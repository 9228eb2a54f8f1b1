"""``HungarianAssigner``: DETR's one-to-one matching of predictions to ground-truth boxes.

Shape letters: Q predictions (queries), G ground-truth boxes.

Mirrors mmdetection 3.x ``mmdet/models/task_modules/assigners/hungarian_assigner.py``: the cost
is the sum of the configured match costs (each already weighted), the matching is
``scipy.optimize.linear_sum_assignment`` on the detached CPU cost, every prediction left
unmatched is background (gt index 0, label -1) and nothing is ignored. When G > Q every
prediction is matched and the G - Q ground truths that cost most to cover go unmatched.
Differences from mmdet:

- ``max_overlaps`` is all zeros (Q,): mmdet returns None, our ``AssignResult`` holds a tensor,
  and the matching has no overlap to report. Nothing downstream of a DETR head reads it.
- A NaN or infinite cost raises a ValueError naming the match cost that produced it (mmdet
  lets scipy fail with "matrix contains invalid numeric entries" or "cost matrix is infeasible").
"""
from __future__ import annotations

import torch
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from rcnn_det.registry import TASK_UTILS

from .assign_result import AssignResult


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-total-cost one-to-one matching of a finite (Q, G) cost matrix.

    Returns:
        (pred_inds, gt_inds): int64 (min(Q, G),) on ``cost``'s device, matched pairs.
    """
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return (torch.from_numpy(rows).long().to(cost.device),
            torch.from_numpy(cols).long().to(cost.device))


@TASK_UTILS.register_module()
class HungarianAssigner:
    """mmdetection's HungarianAssigner (same arguments and results).

    Args:
        match_costs: one match-cost config or a list of them, e.g. Deformable DETR's
            ``[dict(type='FocalLossCost', weight=2.0),
            dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
            dict(type='IoUCost', iou_mode='giou', weight=2.0)]``.
    """

    def __init__(self, match_costs: dict | ConfigDict | list[dict | ConfigDict]) -> None:
        if isinstance(match_costs, dict):
            match_costs = [match_costs]
        if not isinstance(match_costs, (list, tuple)) or len(match_costs) == 0:
            raise ValueError('HungarianAssigner: match_costs must be a match-cost config dict or '
                             f'a non-empty list of them, got {match_costs!r}')
        self.match_costs = [TASK_UTILS.build(cfg) for cfg in match_costs]

    def assign(self, pred_instances: InstanceData, gt_instances: InstanceData,
               img_meta: dict | None = None, **kwargs) -> AssignResult:
        """Match each prediction to at most one ground truth and each ground truth to at most one
        prediction, at the least total cost.

        Args:
            pred_instances: what the costs read, usually ``scores`` (Q, C) logits and ``bboxes``
                (Q, 4) xyxy pixels.
            gt_instances: ``labels`` (G,) and whatever the costs read, usually ``bboxes`` (G, 4).
            img_meta: the image's metainfo; ``BBoxL1Cost`` reads ``img_shape``.
        Returns:
            AssignResult: gt_inds (Q,) 0 background, k > 0 matched to ground truth k - 1;
            labels (Q,) the matched ground truth's class, -1 for background; max_overlaps zeros.
        """
        gt_labels = gt_instances.labels
        num_gts, num_preds = len(gt_instances), len(pred_instances)
        device = gt_labels.device
        gt_inds = torch.zeros(num_preds, dtype=torch.long, device=device)     # all background
        labels = torch.full((num_preds,), -1, dtype=torch.long, device=device)
        max_overlaps = torch.zeros(num_preds, device=device)
        if num_gts == 0 or num_preds == 0:
            return AssignResult(num_gts, gt_inds, max_overlaps, labels)
        costs = [match_cost(pred_instances=pred_instances, gt_instances=gt_instances,
                            img_meta=img_meta) for match_cost in self.match_costs]
        cost = torch.stack(costs).sum(dim=0).detach().cpu()                 # (Q, G)
        if not bool(torch.isfinite(cost).all()):
            raise ValueError(self._non_finite_message(costs))
        pred_inds, matched_gts = hungarian_match(cost)
        pred_inds, matched_gts = pred_inds.to(device), matched_gts.to(device)
        gt_inds[pred_inds] = matched_gts + 1
        labels[pred_inds] = gt_labels[matched_gts].long()
        return AssignResult(num_gts, gt_inds, max_overlaps, labels)

    def _non_finite_message(self, costs: list[Tensor]) -> str:
        """Name every match cost whose matrix holds a NaN or an infinity."""
        culprits = []
        for match_cost, cost in zip(self.match_costs, costs):
            bad = ~torch.isfinite(cost.detach())
            if bool(bad.any()):
                pred, gt = (int(i) for i in bad.nonzero()[0])
                culprits.append(f'{match_cost!r} has {int(bad.sum())} of {cost.numel()} entries '
                                f'NaN or infinite (first: prediction {pred}, ground truth {gt}, '
                                f'value {cost[pred, gt].item()})')
        if not culprits:
            culprits.append(f'the costs are finite but their sum overflows {costs[0].dtype}')
        return ('HungarianAssigner: the matching cost is not finite, so no matching exists: '
                + '; '.join(culprits) + '. Check the predictions (boxes, scores) for NaN or '
                'infinity, e.g. from a diverged loss.')
