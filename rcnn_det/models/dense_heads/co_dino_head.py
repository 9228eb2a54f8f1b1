"""``CoDINOHead``: Co-DINO's query head (Zong et al., 2023), the official names of
``projects/CO-DETR`` (``query_head.transformer.*``, ``cls_branches``, ``reg_branches``,
``downsample``, ``dn_generator.label_embedding``): DINO's head (denoising, mixed query
selection, look-forward-twice, usually with QualityFocalLoss) which also hands its encoder
memory to the auxiliary heads and trains the decoder on their positives.

Shape letters: B images, Q matching queries, D denoising queries, n positive queries per image,
C classes, E embed dims, K decoder layers, L levels.
"""
from __future__ import annotations

import copy

import torch.nn as nn
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS
from rcnn_det.structures import SampleList

from ..auxiliary_heads import AuxPositives
from ..layers.denoising import build_dn_generator
from ..layers.dino_transformer import REFINE_EPS
from .co_deformable_detr_head import aux_query_targets
from .deformable_detr_head import (DEFAULT_DETR_BOX_LOSS, DEFAULT_DETR_IOU_LOSS,
                                   image_masks, per_layer)
from .dino_head import DINOHead

DEFAULT_CO_DINO_CLS_LOSS = dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0,
                                loss_weight=1.0)
DEFAULT_CO_DINO_POSITIONAL_ENCODING = dict(type='SinePositionalEncoding', num_feats=128,
                                           normalize=True)


@MODELS.register_module()
class CoDINOHead(DINOHead):
    """DINOHead with its transformer (``CoDinoTransformer``) and:

    forward(mlvl_feats, metas, dn=None) -> (cls_scores (K, B, D + Q, C), bbox_preds, the
        selected proposals' logits (B, Q, C) and boxes (B, Q, 4), memory_maps): the encoder
        memory as L maps (B, E, H_l, W_l) and one more, ``downsample`` of the coarsest.
    loss_and_memory(x, samples) -> (matching, encoder and denoising losses, memory_maps)
    loss_aux(memory_maps, positives, head_idx, samples) -> ``loss_*_aux`` (last layer) and
        ``d{k}.loss_*_aux``: the decoder on an auxiliary head's positives, no matching.
    predict(x, samples) -> the best (query, class) pairs of the last layer, then the
        ``test_cfg.nms`` (Co-DINO: soft-NMS) of the shared post-processing.

    Args:
        num_query: Q, the matching queries (and the proposals the encoder selects).
        in_channels: accepted for mmdetection's configs and unused (the width is the
            transformer's ``embed_dims``).
        max_pos_coords: at most this many positive queries per image (official: 300).
        dn_cfg: the denoising queries (``CdnQueryGenerator``: mmdetection 3.x's keys or the
            official ones).
        use_zero_padding: the official alternative padding of the positive queries; not
            supported, no recipe uses it.
    """

    def __init__(self, num_classes: int, transformer: dict, num_query: int = 900,
                 in_channels: int | None = None, max_pos_coords: int = 300,
                 dn_cfg: dict | None = None, use_zero_padding: bool = False,
                 positional_encoding: dict = DEFAULT_CO_DINO_POSITIONAL_ENCODING,
                 num_reg_fcs: int = 2, as_two_stage: bool = True,
                 sync_cls_avg_factor: bool = False, loss_cls=DEFAULT_CO_DINO_CLS_LOSS,
                 loss_bbox=DEFAULT_DETR_BOX_LOSS, loss_iou=DEFAULT_DETR_IOU_LOSS,
                 train_cfg: dict | None = None, test_cfg: dict | None = None,
                 init_cfg=None) -> None:
        if use_zero_padding:
            raise NotImplementedError('CoDINOHead: use_zero_padding=True is not supported '
                                      '(the official recipes pad with random negatives)')
        if not as_two_stage:
            raise ValueError('CoDINOHead: as_two_stage must be True')
        transformer = dict(copy.deepcopy(transformer), as_two_stage=True, mixed_selection=True)
        proposals = transformer.setdefault('two_stage_num_proposals', num_query)
        if proposals != num_query:
            raise ValueError(f'CoDINOHead: transformer.two_stage_num_proposals ({proposals}) '
                             f'must equal num_query ({num_query})')
        built = MODELS.build(transformer)
        super().__init__(num_classes, embed_dims=built.embed_dims, num_reg_fcs=num_reg_fcs,
                         num_pred_layer=built.decoder.num_layers + 1, share_pred_layer=False,
                         as_two_stage=True, sync_cls_avg_factor=sync_cls_avg_factor,
                         loss_cls=loss_cls, loss_bbox=loss_bbox, loss_iou=loss_iou,
                         reference_eps=REFINE_EPS, train_cfg=train_cfg, test_cfg=test_cfg,
                         init_cfg=init_cfg)
        self.transformer = built
        self.num_query = num_query
        self.max_pos_coords = max_pos_coords
        self.positional_encoding = MODELS.build(positional_encoding)
        if self.positional_encoding.num_feats * 2 != self.embed_dims:
            raise ValueError(f'CoDINOHead: positional_encoding.num_feats '
                             f'({self.positional_encoding.num_feats}) must be half of '
                             f'embed_dims ({self.embed_dims})')
        e = self.embed_dims
        self.downsample = nn.Sequential(nn.Conv2d(e, e, 3, stride=2, padding=1),
                                        nn.GroupNorm(32, e))
        self.dn_generator = build_dn_generator(dn_cfg, num_classes=num_classes, embed_dims=e,
                                               num_matching_queries=num_query,
                                               where='query_head.dn_cfg')

    @property
    def num_co_heads(self) -> int:
        """How many auxiliary heads the transformer has positive-query layers for."""
        return self.transformer.num_co_heads

    def init_weights(self) -> None:
        """The transformer's own init (as the official head does), then the branches'."""
        self.transformer.init_weights()
        super().init_weights()

    def forward(self, mlvl_feats: tuple[Tensor, ...], batch_img_metas: list[dict],
                dn: tuple | None = None):
        feats = list(mlvl_feats[:self.transformer.num_feature_levels])
        masks = image_masks(batch_img_metas, feats)
        positions = [self.positional_encoding(m) for m in masks]
        dn_label_query, dn_bbox_query, attn_mask = (dn[:3] if dn is not None
                                                    else (None, None, None))
        hidden_states, references, topk_score, topk_boxes, enc = self.transformer(
            feats, masks, positions, dn_label_query, dn_bbox_query, attn_mask,
            reg_branches=self.reg_branches, cls_branches=self.cls_branches)
        if dn_label_query is not None and dn_label_query.shape[1] == 0:
            # no ground truth in the batch: keep the label embedding in the graph (DDP)
            hidden_states = hidden_states + self.dn_generator.label_embedding.weight[0, 0] * 0.
        cls_scores, bbox_preds = self.predict_layers(hidden_states, references[0],
                                                     references[1:], eps=self.reference_eps)
        maps = enc.maps()
        return cls_scores, bbox_preds, topk_score, topk_boxes, (*maps,
                                                                self.downsample(maps[-1]))

    # ---- training -------------------------------------------------------------------------

    def loss(self, x: tuple[Tensor, ...], batch_data_samples: SampleList) -> dict:
        return self.loss_and_memory(x, batch_data_samples)[0]

    def loss_and_memory(self, x: tuple[Tensor, ...], batch_data_samples: SampleList
                        ) -> tuple[dict, tuple[Tensor, ...]]:
        if self.dn_generator is None:
            raise RuntimeError('CoDINOHead.loss needs a dn_cfg (the denoising queries)')
        metas = [s.metainfo for s in batch_data_samples]
        dn = self.dn_generator(batch_data_samples)
        *outs, memory_maps = self(x, metas, dn)
        losses = self.loss_by_feat(*outs, [s.gt_instances for s in batch_data_samples], metas,
                                   dn.dn_meta)
        return losses, memory_maps

    def loss_aux(self, memory_maps: tuple[Tensor, ...], positives: AuxPositives, head_idx: int,
                 batch_data_samples: SampleList) -> dict:
        metas = [s.metainfo for s in batch_data_samples]
        coords, labels, targets, label_weights, bbox_weights, feats = aux_query_targets(
            positives, metas, self.num_classes, self.max_pos_coords)
        maps = list(memory_maps[:self.transformer.num_feature_levels])
        hidden_states, references = self.transformer.forward_aux(
            maps, image_masks(metas, maps), coords, feats, head_idx,
            reg_branches=self.reg_branches)
        cls_scores, bbox_preds = self.predict_layers(hidden_states, references[0],
                                                     references[1:], eps=self.reference_eps)
        return per_layer(self.layers_losses_by_targets(
            cls_scores, bbox_preds, labels, label_weights, targets, bbox_weights, metas),
            '{}_aux')

    # ---- inference ------------------------------------------------------------------------

    def predict(self, x: tuple[Tensor, ...], batch_data_samples: SampleList
                ) -> list[InstanceData]:
        metas = [s.metainfo for s in batch_data_samples]
        cls_scores, bbox_preds = self(x, metas)[:2]
        return self.predict_by_feat(cls_scores[-1], bbox_preds[-1], metas)
