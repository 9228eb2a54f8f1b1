"""``AssignResult``: which ground-truth box, if any, each prior was given."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class AssignResult:
    """mmdetection's AssignResult fields.

    num_gts:      G, the number of ground-truth boxes.
    gt_inds:      (N,) int64: 0 background, -1 ignored, k > 0 assigned to ground truth k - 1.
    max_overlaps: (N,) the prior's best IoU with any ground truth.
    labels:       (N,) int64 class of the assigned ground truth, -1 where unassigned.
    """
    num_gts: int
    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor

    @property
    def num_preds(self) -> int:
        return self.gt_inds.numel()

    def add_gt_(self, gt_labels: Tensor) -> None:
        """Prepend the ground-truth boxes themselves as priors assigned to themselves."""
        self_inds = torch.arange(1, len(gt_labels) + 1, dtype=torch.long,
                                 device=gt_labels.device)
        self.gt_inds = torch.cat([self_inds, self.gt_inds])
        self.max_overlaps = torch.cat([self.max_overlaps.new_ones(len(gt_labels)),
                                       self.max_overlaps])
        self.labels = torch.cat([gt_labels.long(), self.labels])
