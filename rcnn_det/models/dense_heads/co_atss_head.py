"""``CoATSSHead``: Co-DETR's one-to-many ATSS branch, an ``ATSSHead`` whose training also
returns its assignment, so that its positive anchors become extra decoder queries."""
from __future__ import annotations

import torch
from torch import Tensor

from rcnn_det.registry import MODELS
from rcnn_det.structures import SampleList

from ..utils import AuxPositives
from .atss_head import ATSSHead


@MODELS.register_module()
class CoATSSHead(ATSSHead):
    """loss(x, samples) -> (ATSSHead's losses, AuxPositives(kind='atss')) whose priors are all
    the anchors of every level (level-major, row-major inside a level, as the maps flatten)."""

    def loss(self, x: tuple[Tensor, ...], batch_data_samples: SampleList
             ) -> tuple[dict, AuxPositives]:
        losses, anchors, targets = self.loss_and_targets(*self(x), batch_data_samples)
        num_images = targets.labels.shape[0]
        pos = (targets.labels >= 0) & (targets.labels < self.num_classes)      # (B, A)
        priors = anchors[None].expand(num_images, -1, -1)
        gt_boxes = targets.bbox_targets
        if not self.reg_decoded_bbox:
            gt_boxes = self.bbox_coder.decode(priors, gt_boxes)
        gt_boxes = torch.where(pos[..., None], gt_boxes, torch.zeros_like(gt_boxes))
        labels = targets.labels.masked_fill(~pos, self.num_classes)
        return losses, AuxPositives(coords=priors, labels=labels, targets=gt_boxes.detach(),
                                    feats=None, kind='atss')
