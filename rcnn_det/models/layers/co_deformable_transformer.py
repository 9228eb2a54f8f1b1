"""Co-DETR's deformable transformer (Zong et al., 2023): the two-stage Deformable DETR
transformer plus decoder passes over customised positive queries, one per auxiliary head.

Official (Co-DETR) module names: ``head_pos_embed``, ``aux_pos_trans.{k}``,
``aux_pos_trans_norm.{k}``, ``pos_feats_trans.{k}``, ``pos_feats_norm.{k}``.
Shape letters as in ``deformable_transformer``; n positive queries per image.
"""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from rcnn_det.registry import MODELS

from .deformable_transformer import (DeformableDetrTransformer,
                                     DeformableDetrTransformerDecoder, inverse_sigmoid,
                                     proposal_pos_embed)

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
