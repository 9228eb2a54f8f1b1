"""``DINOHead``: DINO's prediction branches and losses (Zhang et al., 2023), mmdetection 3.x's
head (the transformer belongs to the detector): one-to-one losses of the matching queries, the
encoder loss of the selected proposals, and the denoising losses.

Shape letters: B images, Q matching queries, D denoising queries per image, G denoising groups,
C classes, K decoder layers. Boxes are normalised (cx, cy, w, h) of each image's ``img_shape``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS
from rcnn_det.structures import bbox_xyxy_to_cxcywh

from .deformable_detr_head import (DEFAULT_DETR_BOX_LOSS, DEFAULT_DETR_CLS_LOSS,
                                   DEFAULT_DETR_IOU_LOSS, DETRHeadBase, image_factors,
                                   per_layer)


@MODELS.register_module()
class DINOHead(DETRHeadBase):
    """mmdetection 3.x's DINOHead: ``cls_branches``, ``reg_branches`` (``num_pred_layer`` of
    each: one per decoder layer and, two-stage, one for the encoder proposals).

    forward(hidden_states (K, B, Q_all, E), references (K + 1, B, Q_all, 4)) ->
        (cls_scores (K, B, Q_all, C) logits, bbox_preds (K, B, Q_all, 4)); layer k predicts
        relative to references[k].
    loss_by_feat(cls_scores, bbox_preds, enc_cls (B, Q, C), enc_boxes (B, Q, 4), gts, metas,
        dn_meta) -> ``loss_*`` / ``d{k}.loss_*`` (matching queries, Hungarian), ``enc_loss_*``
        (the selected proposals, Hungarian, with the real classes), ``dn_loss_*`` /
        ``d{k}.dn_loss_*`` (the denoising queries: each group's positive slots reconstruct
        their ground truths, everything else is background). The first D of Q_all queries
        are the denoising ones.
    predict_by_feat: the best (query, class) pairs of the last layer (``test_cfg.max_per_img``).
    """

    def __init__(self, num_classes: int, embed_dims: int = 256, num_reg_fcs: int = 2,
                 num_pred_layer: int = 7, share_pred_layer: bool = False,
                 as_two_stage: bool = True, sync_cls_avg_factor: bool = False,
                 loss_cls=DEFAULT_DETR_CLS_LOSS, loss_bbox=DEFAULT_DETR_BOX_LOSS,
                 loss_iou=DEFAULT_DETR_IOU_LOSS, reference_eps: float = 1e-5,
                 train_cfg: dict | None = None, test_cfg: dict | None = None,
                 init_cfg=None) -> None:
        super().__init__(num_classes, loss_cls, loss_bbox, loss_iou, sync_cls_avg_factor,
                         train_cfg, test_cfg, init_cfg=init_cfg)
        self.embed_dims = embed_dims
        self.as_two_stage = as_two_stage
        self.reference_eps = reference_eps
        self.build_branches(embed_dims, num_pred_layer, share_pred_layer, num_reg_fcs)

    def init_weights(self) -> None:
        """mmdet's: class biases at prior 0.01, box branches' last layers zero (two-stage: the
        size outputs too; one-stage: the first branch's sizes -2)."""
        self.init_branches()
        if not self.as_two_stage:
            nn.init.constant_(self.reg_branches[0][-1].bias.data[2:], -2.0)
        self._is_init = True

    def forward(self, hidden_states: Tensor, references: Tensor) -> tuple[Tensor, Tensor]:
        return self.predict_layers(hidden_states, references[0], references[1:],
                                   eps=self.reference_eps)

    # ---- training -------------------------------------------------------------------------

    def loss_by_feat(self, all_cls_scores: Tensor, all_bbox_preds: Tensor,
                     enc_cls_scores: Tensor | None, enc_bbox_preds: Tensor | None,
                     batch_gt_instances: list[InstanceData], metas: list[dict],
                     dn_meta: dict | None) -> dict:
        num_dn = dn_meta['num_denoising_queries'] if dn_meta is not None else 0
        losses = self.layers_losses(all_cls_scores[:, :, num_dn:],
                                    all_bbox_preds[:, :, num_dn:], batch_gt_instances, metas)
        if enc_cls_scores is not None:
            layer = self.loss_single(enc_cls_scores, enc_bbox_preds, batch_gt_instances, metas)
            losses.update({'enc_' + name: value for name, value in layer.items()})
        if dn_meta is not None:
            losses.update(self.dn_losses(all_cls_scores[:, :, :num_dn],
                                         all_bbox_preds[:, :, :num_dn], batch_gt_instances,
                                         metas, dn_meta))
        return losses

    def dn_losses(self, dn_cls_scores: Tensor, dn_bbox_preds: Tensor,
                  batch_gt_instances: list[InstanceData], metas: list[dict],
                  dn_meta: dict) -> dict:
        """``dn_loss_*`` (last layer) and ``d{k}.dn_loss_*``: no matching, the slots say which
        ground truth each positive denoising query reconstructs."""
        labels, targets, weights = self.dn_targets(batch_gt_instances, metas, dn_meta,
                                                   dn_cls_scores.device)
        label_weights = torch.ones_like(labels, dtype=dn_cls_scores.dtype)
        if labels.shape[1] == 0:   # no ground truth in the batch: no denoising queries
            zero = dn_cls_scores.sum() * 0 + dn_bbox_preds.sum() * 0
            layers = [dict(loss_cls=zero, loss_bbox=zero, loss_iou=zero)] * len(dn_cls_scores)
        else:
            layers = self.layers_losses_by_targets(dn_cls_scores, dn_bbox_preds, labels,
                                                   label_weights, targets, weights, metas)
        return per_layer(layers, 'dn_{}')

    def dn_targets(self, batch_gt_instances: list[InstanceData], metas: list[dict],
                   dn_meta: dict, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """labels (B, D) (C = background), targets (B, D, 4) and their weights (B, D, 4):
        image i's ground truth j is the target of slot g * (D / G) + j of every group g (the
        positive half of the group); the negatives and padding slots are background."""
        num_dn, num_groups = dn_meta['num_denoising_queries'], dn_meta['num_denoising_groups']
        per_group = num_dn // max(num_groups, 1)
        num_images = len(batch_gt_instances)
        labels = torch.full((num_images, num_dn), self.num_classes, dtype=torch.long,
                            device=device)
        targets = torch.zeros((num_images, num_dn, 4), device=device)
        weights = torch.zeros((num_images, num_dn, 4), device=device)
        factors = image_factors(metas, device)
        for i, gt in enumerate(batch_gt_instances):
            count = len(gt.labels)
            if count == 0:
                continue
            slots = (torch.arange(num_groups, device=device)[:, None] * per_group
                     + torch.arange(count, device=device)).flatten()
            labels[i, slots] = gt.labels.repeat(num_groups)
            targets[i, slots] = bbox_xyxy_to_cxcywh(gt.bboxes / factors[i]).repeat(num_groups, 1)
            weights[i, slots] = 1.0
        return labels, targets, weights
