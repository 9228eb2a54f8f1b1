"""``CoDeformDETRHead``: Co-DETR's query head (Zong et al., 2023). The two-stage Deformable DETR
head with mixed query selection, which also hands its encoder memory to the auxiliary heads and
trains the decoder on their positives as extra, one-to-many supervised queries.

Shape letters: B images, Q queries, n positive queries per image, C classes, E embed dims,
K decoder layers, A priors of an auxiliary head per image.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from rcnn_det.registry import MODELS
from rcnn_det.structures import SampleList, bbox_xyxy_to_cxcywh

from ..auxiliary_heads import AuxPositives
from .deformable_detr_head import DeformableDETRHead, image_factors, image_masks, per_layer

MIN_POS_QUERIES = 9   # the official lower bound on positive queries per image


@MODELS.register_module()
class CoDeformDETRHead(DeformableDETRHead):
    """DeformableDETRHead plus:

    forward(...) -> (cls_scores, bbox_preds, enc_cls, enc_boxes, memory_maps): the encoder
        memory as L maps (B, E, H_l, W_l) and one more, ``downsample`` of the coarsest (stride
        x2); the auxiliary heads train on these maps, so their losses reach the encoder and
        backbone.
    loss(x, samples) -> the one-to-one losses (``loss_by_feat`` of the first four outputs)
    loss_and_memory(x, samples) -> (those losses, the memory maps)
    loss_aux(memory_maps, positives, head_idx, samples) -> the decoder's losses on an
        auxiliary head's
        positives: ``loss_cls_aux``, ``loss_bbox_aux``, ``loss_iou_aux`` (last layer) and
        ``d{k}.loss_*_aux``, each x ``lambda_1``; no matching, the auxiliary assignment is the
        target.

    Args:
        max_pos_coords: at most this many positive queries per image (official: 300).
        lambda_1: weight of the positive-query losses.
        use_zero_padding: the official alternative padding of the positive queries (zero
            queries masked out of self-attention); not supported, the recipe does not use it.
    """

    def __init__(self, *args, max_pos_coords: int = 300, lambda_1: float = 1.0,
                 use_zero_padding: bool = False, mixed_selection: bool = True,
                 **kwargs) -> None:
        if use_zero_padding:
            raise NotImplementedError('CoDeformDETRHead: use_zero_padding=True is not supported '
                                      '(the official recipes pad with random negatives)')
        super().__init__(*args, mixed_selection=mixed_selection, **kwargs)
        embed = self.transformer.embed_dims
        self.max_pos_coords = max_pos_coords
        self.lambda_1 = lambda_1
        self.downsample = nn.Sequential(nn.Conv2d(embed, embed, 3, stride=2, padding=1),
                                        nn.GroupNorm(32, embed))

    def forward(self, mlvl_feats: tuple[Tensor, ...], batch_img_metas: list[dict]):
        *outs, enc = self.forward_with_memory(mlvl_feats, batch_img_metas)
        maps = enc.maps()
        return (*outs, (*maps, self.downsample(maps[-1])))

    @property
    def num_co_heads(self) -> int:
        """How many auxiliary heads the transformer has positive-query layers for."""
        return self.transformer.num_co_heads

    # ---- training -------------------------------------------------------------------------

    def loss(self, x: tuple[Tensor, ...], batch_data_samples: SampleList) -> dict:
        return self.loss_and_memory(x, batch_data_samples)[0]

    def loss_and_memory(self, x: tuple[Tensor, ...], batch_data_samples: SampleList
                        ) -> tuple[dict, tuple[Tensor, ...]]:
        """The one-to-one losses and the memory maps the auxiliary heads train on."""
        metas = [s.metainfo for s in batch_data_samples]
        gts = [s.gt_instances for s in batch_data_samples]
        *outs, memory_maps = self(x, metas)
        return self.loss_by_feat(*outs, gts, metas), memory_maps

    def loss_aux(self, memory_maps: tuple[Tensor, ...], positives: AuxPositives, head_idx: int,
                 batch_data_samples: SampleList) -> dict:
        metas = [s.metainfo for s in batch_data_samples]
        coords, labels, targets, label_weights, bbox_weights, feats = self.get_aux_targets(
            positives, metas)
        maps = list(memory_maps[:self.transformer.num_feature_levels])
        queries, references = self.transformer.forward_aux(
            maps, image_masks(metas, maps), coords, feats, head_idx,
            reg_branches=self.reg_branches if self.with_box_refine else None)
        cls_scores, bbox_preds = self.predict_layers(queries, coords, references)
        return per_layer(self.layers_losses_by_targets(
            cls_scores, bbox_preds, labels, label_weights, targets, bbox_weights, metas),
            '{}_aux', self.lambda_1)

    def get_aux_targets(self, positives: AuxPositives, metas: list[dict]
                        ) -> tuple[Tensor, ...]:
        return aux_query_targets(positives, metas, self.num_classes, self.max_pos_coords)


def aux_query_targets(positives: AuxPositives, metas: list[dict], num_classes: int,
                      max_pos_coords: int) -> tuple[Tensor, ...]:
    """An auxiliary head's positives as the same number n of queries for every image: n = the
    most positives an image has, clamped to [9, max_pos_coords] (and to A). An image with more
    keeps a random n of them, one with fewer is padded with randomly chosen negatives of its
    own, trained as background. Positives first.

    Returns coords (B, n, 4) and targets (B, n, 4) normalised cxcywh, labels (B, n) (C =
    background), label_weights (B, n) all 1, bbox_weights (B, n, 4) 1 on positives, and
    feats (B, n, E).
    """
    labels = positives.labels
    is_pos = (labels >= 0) & (labels < num_classes)                                # (B, A)
    num = int(is_pos.sum(1).max()) if labels.numel() else 0
    num = min(max(min(num, max_pos_coords), MIN_POS_QUERIES), labels.shape[1])
    chosen = []
    for pos in is_pos:
        pos_idx, neg_idx = pos.nonzero()[:, 0], (~pos).nonzero()[:, 0]
        pos_idx = pos_idx[torch.randperm(len(pos_idx), device=pos.device)[:num]]
        neg_idx = neg_idx[torch.randperm(len(neg_idx), device=pos.device)
                          [:num - len(pos_idx)]]
        chosen.append(torch.cat([pos_idx, neg_idx]))
    index = torch.stack(chosen)                                                    # (B, n)

    def gather(t: Tensor) -> Tensor:
        return t.gather(1, index.view(*index.shape, *[1] * (t.dim() - 2)).expand(
            -1, -1, *t.shape[2:]))

    factors = image_factors(metas, labels.device)[:, None]                          # (B, 1, 4)
    coords = bbox_xyxy_to_cxcywh(gather(positives.coords) / factors)
    targets = bbox_xyxy_to_cxcywh(gather(positives.targets) / factors)
    labels = gather(labels)
    label_weights = torch.ones_like(labels, dtype=coords.dtype)
    bbox_weights = (labels < num_classes)[..., None].expand(-1, -1, 4).to(coords.dtype)
    return coords, labels, targets, label_weights, bbox_weights, gather(positives.feats)
