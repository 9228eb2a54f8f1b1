"""``ATSSAssigner``: Adaptive Training Sample Selection (Zhang et al., CVPR 2020), vectorised.

Shape letters: G ground-truth boxes, N priors of one image over all levels, M priors of one
level, K candidates per ground truth (the sum over levels of min(topk, M)).

Mirrors mmdetection 3.x ``mmdet/models/task_modules/assigners/atss_assigner.py``
(``ATSSAssigner.assign``), which follows the official
``sfzhang15/ATSS atss_core/modeling/rpn/atss/loss.py``. Decisions where mmdet leaves something
open or returns something unusual:

- Distance ties: mmdet takes each level's nearest priors with ``torch.topk``, which breaks ties
  in no documented order. Here a tie at the k-th distance goes to the lower prior index, and the
  candidates are ordered by (distance, index), so the result is the same on every device.
- A prior positive for several ground truths takes the highest IoU; among equal IoUs the lowest
  ground-truth index wins (``Tensor.max(dim)`` returns the first maximum, as in mmdet).
- ``max_overlaps`` is the assigned IoU for positives and ``-INF`` = -1e8 (mmdet's sentinel,
  ``INF = 100000000``) for every other prior, background and ignored alike; with G = 0 or N = 0
  it is all zeros. mmdet returns exactly this; nothing downstream reads it for ATSS.
- The threshold is mean + unbiased std of the K candidate IoUs; with K = 1 the std is NaN, so
  nothing is positive (as in mmdet).
- Ignore boxes (``ignore_iof_thr > 0``): a prior whose IoF with any ignore box exceeds the
  threshold gets distance INF to every ground truth before candidate selection and gt index -1.
  When a level has fewer than k other priors such a prior can still be a candidate: its IoU
  counts in the threshold and, if it passes, it is positive (mmdet overwrites the -1).
"""
from __future__ import annotations

import warnings

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import TASK_UTILS

from .assign_result import AssignResult

INF = 100000000        # mmdet's sentinel: distance of ignored priors, -INF IoU of non-positives
CENTER_MARGIN = 0.01   # a positive's centre lies this many pixels inside its ground truth (mmdet)


def nearest_k(distances: Tensor, k: int) -> Tensor:
    """(G, M) distances -> (G, k) indices of the k smallest per row, ordered by (distance, index).

    ``torch.topk`` alone would break a tie at the k-th distance arbitrarily; rows where it had to
    (more than k distances <= the k-th) are redone with a stable sort, which takes the lower index.
    """
    values, idx = distances.topk(k, dim=1, largest=False)                  # (G, k) sorted
    tied = (distances <= values[:, -1:]).sum(dim=1) > k                      # (G,)
    if bool(tied.any()):
        idx[tied] = distances[tied].sort(dim=1, stable=True).indices[:, :k]
    idx = idx.sort(dim=1).values                                             # index order, then
    order = distances.gather(1, idx).sort(dim=1, stable=True).indices        # stable by distance
    return idx.gather(1, order)


def atss_assign(overlaps: Tensor, priors: Tensor, gt_bboxes: Tensor,
                num_level_priors: list[int], topk: int,
                ignored: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """mmdet's ATSS assignment.

    Args:
        overlaps: (G, N) IoU of each ground truth with each prior (DDOD: the cost matrix).
        priors: (N, 4) xyxy priors, level after level; gt_bboxes: (G, 4) xyxy.
        num_level_priors: M of each level, summing to N.
        ignored: (N,) bool, priors inside an ignore region, or None.
    Returns:
        gt_inds (N,) int64: -1 ignored, 0 background, k > 0 ground truth k - 1;
        max_overlaps (N,): the assigned overlap, -INF where not positive (zeros if G or N is 0).
    """
    num_gts, num_priors = overlaps.shape
    gt_inds = overlaps.new_zeros((num_priors,), dtype=torch.long)
    if num_gts == 0 or num_priors == 0:
        return gt_inds, overlaps.new_zeros((num_priors,))
    if sum(num_level_priors) != num_priors:
        raise ValueError(f'ATSSAssigner: num_level_priors {list(num_level_priors)} sum to '
                         f'{sum(num_level_priors)}, but there are {num_priors} priors')
    prior_ctr = (priors[:, :2] + priors[:, 2:4]) / 2.0                       # (N, 2)
    gt_ctr = (gt_bboxes[:, :2] + gt_bboxes[:, 2:4]) / 2.0                    # (G, 2)
    distances = (prior_ctr[None, :, :] - gt_ctr[:, None, :]).pow(2).sum(-1).sqrt()  # (G, N)
    if ignored is not None:
        distances[:, ignored] = INF
        gt_inds[ignored] = -1

    candidates, start = [], 0                                                # per level (G, k)
    for num in num_level_priors:
        k = min(topk, num)
        if k > 0:
            candidates.append(nearest_k(distances[:, start:start + num], k) + start)
        start += num
    candidates = torch.cat(candidates, dim=1)                                # (G, K)

    cand_overlaps = overlaps.gather(1, candidates)                           # (G, K)
    if cand_overlaps.shape[1] > 1:
        thr = cand_overlaps.mean(dim=1) + cand_overlaps.std(dim=1)           # (G,), unbiased
    else:                                     # torch.std of one value: NaN (and a warning)
        thr = torch.full_like(cand_overlaps[:, 0], float('nan'))
    cand_ctr = prior_ctr[candidates]                                         # (G, K, 2)
    margin = torch.minimum(cand_ctr - gt_bboxes[:, None, :2],
                           gt_bboxes[:, None, 2:4] - cand_ctr).amin(dim=-1)  # (G, K) min(l,t,r,b)
    is_pos = (cand_overlaps >= thr[:, None]) & (margin > CENTER_MARGIN)      # (G, K)

    # Each prior takes, among the ground truths it is positive for, the one of highest overlap;
    # max() returns the first maximum, so the lowest ground-truth index wins a tie (mmdet).
    pos_overlaps = overlaps.new_full((num_gts, num_priors), -INF)           # (G, N)
    gt_rows = torch.arange(num_gts, device=overlaps.device)[:, None].expand_as(candidates)
    pos_overlaps[gt_rows[is_pos], candidates[is_pos]] = cand_overlaps[is_pos]
    max_overlaps, best_gt = pos_overlaps.max(dim=0)                          # (N,), (N,)
    is_assigned = max_overlaps != -INF
    gt_inds[is_assigned] = best_gt[is_assigned] + 1
    return gt_inds, max_overlaps


@TASK_UTILS.register_module()
class ATSSAssigner:
    """mmdetection's ATSSAssigner (same arguments and results), vectorised over priors and gts.

    Per ground truth: on each level the ``topk`` priors whose centres are nearest its centre are
    candidates; those whose IoU is >= mean + std of the candidates' IoUs and whose centre lies
    inside the box (more than 0.01 px from every side) are positive; a prior positive for several
    ground truths takes the highest IoU. Decisions on ties and sentinels: see the module docstring.

    Args:
        topk: candidates per level and ground truth (fewer on a level with fewer priors).
        alpha: DDOD's dynamic cost: overlaps = sigmoid(score of the gt class)^(1 - alpha)
            * IoU(predicted box, gt)^alpha, from ``pred_instances.scores`` (N, C) logits and
            ``pred_instances.bboxes`` (N, 4); distances and the centre test still use the priors.
        iou_calculator: config dict or built object (``BboxOverlaps2D``).
        ignore_iof_thr: priors whose IoF with an ignore box exceeds it are ignored; <= 0: off.
    """

    def __init__(self, topk: int, alpha: float | None = None,
                 iou_calculator: dict | object = dict(type='BboxOverlaps2D'),
                 ignore_iof_thr: float = -1) -> None:
        self.topk = topk
        self.alpha = alpha
        self.iou_calculator = (TASK_UTILS.build(iou_calculator)
                               if isinstance(iou_calculator, dict) else iou_calculator)
        self.ignore_iof_thr = ignore_iof_thr

    def assign(self, pred_instances: InstanceData, num_level_priors: list[int],
               gt_instances: InstanceData, gt_instances_ignore: InstanceData | None = None
               ) -> AssignResult:
        """mmdet's signature. pred_instances.priors (N, 4+), num_level_priors: priors per level
        (summing to N); gt_instances.bboxes (G, 4), labels (G,); gt_instances_ignore.bboxes
        (I, 4). Returns gt_inds, max_overlaps, labels of shape (N,).
        """
        gt_ignore = gt_instances_ignore
        priors = pred_instances.priors[:, :4]
        gt_bboxes, gt_labels = gt_instances.bboxes, gt_instances.labels
        overlaps = self._overlaps(pred_instances, priors, gt_bboxes, gt_labels)  # (N, G)
        ignored = None
        if (self.ignore_iof_thr > 0 and gt_ignore is not None and len(gt_ignore) > 0
                and overlaps.numel() > 0):
            iof = self.iou_calculator(priors, gt_ignore.bboxes, mode='iof')      # (N, I)
            ignored = iof.max(dim=1).values > self.ignore_iof_thr
        gt_inds, max_overlaps = atss_assign(overlaps.t(), priors, gt_bboxes, num_level_priors,
                                            self.topk, ignored)
        labels = gt_inds.new_full(gt_inds.shape, -1)
        pos = gt_inds > 0
        labels[pos] = gt_labels[gt_inds[pos] - 1].long()
        return AssignResult(len(gt_bboxes), gt_inds, max_overlaps, labels)

    def _overlaps(self, pred_instances: InstanceData, priors: Tensor, gt_bboxes: Tensor,
                  gt_labels: Tensor) -> Tensor:
        """(N, G) IoU of priors and ground truths, or DDOD's cost when ``alpha`` is set."""
        has_preds = 'scores' in pred_instances or 'bboxes' in pred_instances
        if self.alpha is None:
            if has_preds:  # mmdet warns the same way: the predictions are not used
                warnings.warn('ATSSAssigner: pred_instances has scores or bboxes, which are '
                              'used only with alpha (the DDOD cost); alpha is None')
            return self.iou_calculator(priors, gt_bboxes)
        if not ('scores' in pred_instances and 'bboxes' in pred_instances):
            raise ValueError('ATSSAssigner with alpha (the DDOD cost) needs pred_instances.scores '
                             'and pred_instances.bboxes')
        cls_cost = pred_instances.scores[:, gt_labels].sigmoid()                 # (N, G)
        ious = self.iou_calculator(pred_instances.bboxes, gt_bboxes)             # (N, G)
        return cls_cost ** (1 - self.alpha) * ious ** self.alpha
