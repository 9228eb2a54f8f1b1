"""Co-DETR's transformers (Zong et al., 2023): the two-stage Deformable DETR transformer
(Co-Deformable-DETR) or DINO's (Co-DINO), plus decoder passes over customised positive queries,
one per auxiliary head.

Official (Co-DETR) module names: ``head_pos_embed``, ``aux_pos_trans.{k}``,
``aux_pos_trans_norm.{k}``, ``pos_feats_trans.{k}``, ``pos_feats_norm.{k}``.
Shape letters as in ``deformable_transformer``; n positive queries per image.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from torch import Tensor

from rcnn_det.registry import MODELS

from .deformable_transformer import (DeformableDetrTransformer,
                                     DeformableDetrTransformerDecoder, EncodedLevels,
                                     batch_first_layers, encode_levels,
                                     encoder_output_proposals, inverse_sigmoid,
                                     proposal_pos_embed, xavier_then_deformable_init)
from .dino_transformer import select_topk_proposals

# The official decoder adds nothing that rcnn_det's decoder lacks (look_forward_twice).
MODELS.register_module('CoDeformableDetrTransformerDecoder',
                       module=DeformableDetrTransformerDecoder)


@MODELS.register_module()
class CoDeformableDetrTransformer(DeformableDetrTransformer):
    """DeformableDetrTransformer (whose ``forward_with_memory`` also returns the encoder memory
    that feeds the auxiliary heads) with

    forward_aux(mlvl_feats, mlvl_masks, coords (B, n, 4), feats (B, n, C), head_idx) ->
        (queries (K, B, n, C), references (K, B, n, 4)): the decoder over ``mlvl_feats`` taken
        as the memory (no encoder, no level or position embedding), with queries made from the
        auxiliary head's positive boxes (normalised cxcywh, also the initial references) and
        features.
    """

    def __init__(self, num_co_heads: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        c = self.embed_dims
        self.num_co_heads = num_co_heads
        # The official code writes nn.Embedding(num_co_heads, 1, 1, embed_dims), whose
        # positional arguments are embedding_dim=1, padding_idx=1, max_norm=embed_dims: one
        # learned scalar per auxiliary head, added to every channel. The published weights
        # have this (num_co_heads, 1) shape, so it is kept.
        self.head_pos_embed = nn.Embedding(num_co_heads, 1)
        self.aux_pos_trans = nn.ModuleList(nn.Linear(2 * c, 2 * c) for _ in range(num_co_heads))
        self.aux_pos_trans_norm = nn.ModuleList(nn.LayerNorm(2 * c) for _ in range(num_co_heads))
        self.pos_feats_trans = nn.ModuleList(nn.Linear(c, c) for _ in range(num_co_heads))
        self.pos_feats_norm = nn.ModuleList(nn.LayerNorm(c) for _ in range(num_co_heads))

    def forward_aux(self, mlvl_feats: list[Tensor], mlvl_masks: list[Tensor], coords: Tensor,
                    feats: Tensor, head_idx: int, reg_branches: nn.ModuleList | None = None,
                    **kwargs) -> tuple[Tensor, Tensor]:
        if not 0 <= head_idx < self.num_co_heads:
            raise IndexError(f'CoDeformableDetrTransformer: auxiliary head {head_idx} of '
                             f'{self.num_co_heads} (raise num_co_heads)')
        enc = self.encode(mlvl_feats, mlvl_masks, None)
        embed = self.aux_pos_trans_norm[head_idx](self.aux_pos_trans[head_idx](
            proposal_pos_embed(inverse_sigmoid(coords), self.embed_dims // 2)))
        query_pos, query = embed.split(self.embed_dims, -1)
        query = query + self.pos_feats_norm[head_idx](self.pos_feats_trans[head_idx](feats))
        query_pos = query_pos + self.head_pos_embed.weight[head_idx]
        return self.decode(enc, query, query_pos, coords, reg_branches, **kwargs)


@MODELS.register_module()
class CoDinoTransformer(BaseModule):
    """Co-DINO's transformer (official names): DINO's encoder, query selection and decoder, plus
    decoder passes over each auxiliary head's positive queries.

    Children: ``encoder``, ``decoder`` (``DinoTransformerDecoder``), ``level_embeds``,
    ``enc_output``, ``enc_output_norm``, ``query_embed`` (the learned content queries), and per
    auxiliary head k ``aux_pos_trans.{k}`` (Linear(2C, C)), ``aux_pos_trans_norm.{k}`` and, with
    ``with_coord_feat``, ``pos_feats_trans.{k}``, ``pos_feats_norm.{k}``.

    forward(mlvl_feats, mlvl_masks, mlvl_pos_embeds, dn_label_query (B, D, C) or None,
            dn_bbox_query (B, D, 4) or None, attn_mask, reg_branches, cls_branches) ->
        (hidden states (K, B, D + Q, C), references (K + 1, B, D + Q, 4), the selected
         proposals' logits (B, Q, classes) and boxes (B, Q, 4), the encoder's EncodedLevels)
    forward_aux(mlvl_feats, mlvl_masks, coords (B, n, 4), feats (B, n, C), head_idx,
                reg_branches) -> (hidden states (K, B, n, C), references (K + 1, B, n, 4)):
        the decoder over the maps taken as memory, queries made from the positives' boxes
        (and, with ``with_coord_feat``, features).
    """

    def __init__(self, encoder: dict, decoder: dict, as_two_stage: bool = True,
                 num_feature_levels: int = 4, two_stage_num_proposals: int = 900,
                 mixed_selection: bool = True, with_pos_coord: bool = True,
                 with_coord_feat: bool = True, num_co_heads: int = 1, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if not (as_two_stage and mixed_selection):
            raise ValueError('CoDinoTransformer: as_two_stage and mixed_selection must be True')
        self.encoder = MODELS.build(batch_first_layers(encoder))
        self.decoder = MODELS.build(copy.deepcopy(dict(decoder)))
        self.embed_dims = c = self.encoder.embed_dims
        self.as_two_stage = as_two_stage
        self.num_feature_levels = num_feature_levels
        self.two_stage_num_proposals = two_stage_num_proposals
        self.with_coord_feat = with_coord_feat
        self.num_co_heads = num_co_heads if with_pos_coord else 0
        self.level_embeds = nn.Parameter(torch.randn(num_feature_levels, c))
        self.enc_output = nn.Linear(c, c)
        self.enc_output_norm = nn.LayerNorm(c)
        self.query_embed = nn.Embedding(two_stage_num_proposals, c)
        if self.num_co_heads > 0:
            self.aux_pos_trans = nn.ModuleList(nn.Linear(2 * c, c)
                                               for _ in range(self.num_co_heads))
            self.aux_pos_trans_norm = nn.ModuleList(nn.LayerNorm(c)
                                                    for _ in range(self.num_co_heads))
            if with_coord_feat:
                self.pos_feats_trans = nn.ModuleList(nn.Linear(c, c)
                                                     for _ in range(self.num_co_heads))
                self.pos_feats_norm = nn.ModuleList(nn.LayerNorm(c)
                                                    for _ in range(self.num_co_heads))

    def init_weights(self) -> None:
        """The official: Xavier-uniform on every matrix, the deformable attentions' own init,
        level embeddings and content queries ~ N(0, 1)."""
        xavier_then_deformable_init(self)
        nn.init.normal_(self.level_embeds)
        nn.init.normal_(self.query_embed.weight)
        self._is_init = True

    def forward(self, mlvl_feats: list[Tensor], mlvl_masks: list[Tensor],
                mlvl_pos_embeds: list[Tensor], dn_label_query: Tensor | None,
                dn_bbox_query: Tensor | None, attn_mask: Tensor | None,
                reg_branches: nn.ModuleList, cls_branches: nn.ModuleList):
        enc = encode_levels(self.encoder, self.level_embeds, mlvl_feats, mlvl_masks,
                            mlvl_pos_embeds)
        memory, proposals = encoder_output_proposals(enc.memory, enc.padding, enc.shapes)
        memory = self.enc_output_norm(self.enc_output(memory))
        last = self.decoder.num_layers
        topk_score, topk_boxes, references = select_topk_proposals(
            cls_branches[last](memory), reg_branches[last](memory) + proposals,
            self.two_stage_num_proposals)
        batch, num = references.shape[:2]
        query = self.query_embed.weight[None, :num].expand(batch, -1, -1)
        if dn_label_query is not None:
            query = torch.cat([dn_label_query, query], 1)
            references = torch.cat([dn_bbox_query, references], 1)
            size = query.shape[1]
            attn_mask = None if attn_mask is None else attn_mask[:size, :size]
        hidden_states, references = self.decoder(
            query, None, enc.memory, reference_points=references.sigmoid(),
            valid_ratios=enc.ratios, reg_branches=reg_branches, attn_masks=attn_mask,
            key_padding_mask=enc.padding, spatial_shapes=enc.spatial_shapes,
            level_start_index=enc.level_start_index)
        return hidden_states, references, topk_score, topk_boxes, enc

    def forward_aux(self, mlvl_feats: list[Tensor], mlvl_masks: list[Tensor], coords: Tensor,
                    feats: Tensor, head_idx: int, reg_branches: nn.ModuleList
                    ) -> tuple[Tensor, Tensor]:
        if not 0 <= head_idx < self.num_co_heads:
            raise IndexError(f'CoDinoTransformer: auxiliary head {head_idx} of '
                             f'{self.num_co_heads} (raise num_co_heads)')
        enc = self.encode_maps(mlvl_feats, mlvl_masks)
        query = self.aux_pos_trans_norm[head_idx](self.aux_pos_trans[head_idx](
            proposal_pos_embed(inverse_sigmoid(coords), self.embed_dims // 2)))
        if self.with_coord_feat:
            query = query + self.pos_feats_norm[head_idx](self.pos_feats_trans[head_idx](feats))
        return self.decoder(
            query, None, enc.memory, reference_points=coords, valid_ratios=enc.ratios,
            reg_branches=reg_branches, key_padding_mask=enc.padding,
            spatial_shapes=enc.spatial_shapes, level_start_index=enc.level_start_index)

    def encode_maps(self, mlvl_feats: list[Tensor], mlvl_masks: list[Tensor]) -> EncodedLevels:
        """The maps flattened as the decoder's memory, without the encoder."""
        return encode_levels(self.encoder, self.level_embeds, mlvl_feats, mlvl_masks, None)
