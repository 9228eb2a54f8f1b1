"""``SamplingResult``: the positive and negative priors kept for one image's loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SamplingResult:
    """mmdetection's SamplingResult fields (P positives, Q negatives, G ground truths).

    pos_inds, neg_inds:   (P,), (Q,) indices into the priors (gt boxes first when added).
    pos_priors:           (P, 4) xyxy; neg_priors: (Q, 4).
    pos_gt_bboxes:        (P, 4) the ground truth each positive is assigned to.
    pos_gt_labels:        (P,) its class.
    pos_assigned_gt_inds: (P,) its index in 0..G-1.
    pos_is_gt:            (P,) bool, True where the positive is a ground-truth box itself.
    avg_factor:           this image's share of the loss normaliser, the sampler's policy
                          (mmdet's): a RandomSampler counts its positives and negatives, the
                          PseudoSampler its positives only, each as at least one.
    """
    pos_inds: Tensor
    neg_inds: Tensor
    pos_priors: Tensor
    neg_priors: Tensor
    pos_gt_bboxes: Tensor
    pos_gt_labels: Tensor
    pos_assigned_gt_inds: Tensor
    pos_is_gt: Tensor
    num_gts: int
    avg_factor: int

    @property
    def priors(self) -> Tensor:
        """(P + Q, 4): positives first, as mmdet orders RoIs."""
        return torch.cat([self.pos_priors, self.neg_priors])

    @property
    def bboxes(self) -> Tensor:
        return self.priors
