"""``CoATSSHead``: Co-DETR's one-to-many ATSS branch, an ``ATSSHead`` that is also an
auxiliary head: its positive anchors become extra decoder queries."""
from __future__ import annotations

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS
from rcnn_det.structures import SampleList

from ..auxiliary_heads import AuxiliaryHead, AuxLossOutput, AuxPositives
from .atss_head import ATSSHead


@MODELS.register_module()
class CoATSSHead(ATSSHead, AuxiliaryHead):
    """loss_and_positives(x, samples) -> ATSSHead's losses and AuxPositives over every anchor
    of every level (level-major, row-major inside a level, as the maps flatten); each anchor's
    feature is the memory at its location (shared by the A anchors there)."""

    def loss_and_positives(self, x: tuple[Tensor, ...], batch_data_samples: SampleList,
                           rpn_results_list: list[InstanceData] | None = None
                           ) -> AuxLossOutput:
        out = self.loss_and_targets(*self(x), batch_data_samples)
        labels = out.targets.labels                                              # (B, N)
        pos = (labels >= 0) & (labels < self.num_classes)
        priors = out.anchors[None].expand(labels.shape[0], -1, -1)               # (B, N, 4)
        gt_boxes = out.targets.bbox_targets
        if not self.reg_decoded_bbox:
            gt_boxes = self.bbox_coder.decode(priors, gt_boxes)
        gt_boxes = torch.where(pos[..., None], gt_boxes, torch.zeros_like(gt_boxes))
        levels = x[:len(self.scales)]             # the maps forward() used, one per level
        locations = torch.cat([m.flatten(2).transpose(1, 2) for m in levels], 1)  # (B, N / A, E)
        return AuxLossOutput(out.losses, AuxPositives(
            coords=priors, labels=labels.masked_fill(~pos, self.num_classes),
            targets=gt_boxes.detach(),
            feats=locations.repeat_interleave(self.num_base_priors, 1)))
