"""``CoStandardRoIHead``: Co-DETR's one-to-many Faster R-CNN branch, a ``StandardRoIHead``
that is also an auxiliary head: its sampled RoIs become extra decoder queries."""
from __future__ import annotations

import itertools

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS
from rcnn_det.structures import SampleList

from ..auxiliary_heads import AuxiliaryHead, AuxLossOutput, AuxPositives
from .standard_roi_head import StandardRoIHead


@MODELS.register_module()
class CoStandardRoIHead(StandardRoIHead, AuxiliaryHead):
    """loss_and_positives(x, samples, proposals) -> StandardRoIHead's losses and, as
    AuxPositives, the first ``n`` sampled RoIs of each image (positives first), n = the fewest
    any image of the batch sampled (at most ``max_pos_rois``): their boxes, classification
    targets (C = negative), the gt boxes they regress to, and their RoI features averaged over
    the S x S bins (not detached: the query head's loss trains the features).
    """
    needs_proposals = True

    def __init__(self, *args, max_pos_rois: int = 2000, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_pos_rois = max_pos_rois

    def loss_and_positives(self, x: tuple[Tensor, ...], batch_data_samples: SampleList,
                           rpn_results_list: list[InstanceData] | None = None
                           ) -> AuxLossOutput:
        if rpn_results_list is None:
            raise ValueError('CoStandardRoIHead.loss_and_positives needs the RPN proposals')
        out = self.loss_and_targets(x, rpn_results_list, batch_data_samples)
        rois, targets = out.rois, out.targets
        gt_boxes = targets.bbox_targets
        if not self.bbox_head.reg_decoded_bbox:
            gt_boxes = self.bbox_head.bbox_coder.decode(rois[:, 1:], gt_boxes)
        pos = targets.labels < self.bbox_head.num_classes
        gt_boxes = torch.where(pos[:, None], gt_boxes, torch.zeros_like(gt_boxes))
        counts = [len(res.priors) for res in out.sampling_results]
        num = min(self.max_pos_rois, *counts)
        first = [slice(start, start + num) for start in itertools.accumulate([0] + counts[:-1])]
        pooled = out.bbox_feats.mean((2, 3))                                # (R, C)
        return AuxLossOutput(out.losses, AuxPositives(
            coords=torch.stack([rois[s, 1:] for s in first]),
            labels=torch.stack([targets.labels[s] for s in first]),
            targets=torch.stack([gt_boxes[s] for s in first]).detach(),
            feats=torch.stack([pooled[s] for s in first])))
