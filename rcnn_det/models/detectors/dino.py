"""``DINO`` (Zhang et al., 2023): DETR with contrastive denoising, mixed query selection and
look-forward-twice, with mmdetection 3.x's config keys and module names
(``configs/dino/``), so that its configs and checkpoints carry over.

The transformer lives on the detector (``encoder``, ``decoder``, ``level_embed``,
``memory_trans_fc``, ``memory_trans_norm``, ``query_embedding``, ``dn_query_generator``);
``bbox_head`` (``DINOHead``) holds the class and box branches and the losses.

Shape letters: B images, L levels, N encoder tokens, Q matching queries, D denoising queries,
C = ``embed_dims``, K decoder layers.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS
from rcnn_det.structures import SampleList

from ..dense_heads.deformable_detr_head import image_masks
from ..layers.deformable_transformer import (encode_levels, encoder_output_proposals,
                                             xavier_then_deformable_init)
from ..layers.denoising import build_dn_generator
from ..layers.dino_transformer import (DeformableDetrTransformerEncoder, DinoTransformerDecoder,
                                       select_topk_proposals)
from ..layers.positional_encoding import SinePositionalEncoding
from .base import BaseDetector


@MODELS.register_module()
class DINO(BaseDetector):
    """mmdetection 3.x's DINO.

    loss() -> the head's losses (``DINOHead.loss_by_feat``: matching, encoder and denoising
    terms); predict() -> samples with pred_instances in ORIGINAL image pixels (the best
    ``test_cfg.max_per_img`` (query, class) pairs); _forward() -> (cls_scores, bbox_preds) of
    every decoder layer.

    Training: the encoder's tokens each propose a box; the ``num_queries`` best (by their best
    class logit) give the decoder's initial reference boxes, while its content queries are
    learned (``query_embedding``: mixed query selection). In front of them go the denoising
    queries of ``dn_query_generator``, masked so that the matching queries never see them.
    """

    def __init__(self, backbone: dict, neck: dict | None = None, encoder: dict | None = None,
                 decoder: dict | None = None, bbox_head: dict | None = None,
                 positional_encoding: dict | None = None, num_queries: int = 900,
                 num_feature_levels: int = 4, with_box_refine: bool = True,
                 as_two_stage: bool = True, dn_cfg: dict | None = None,
                 train_cfg: dict | None = None, test_cfg: dict | None = None,
                 data_preprocessor: dict | None = None, init_cfg=None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if not (as_two_stage and with_box_refine):
            raise ValueError('DINO: as_two_stage and with_box_refine must be True')
        for name, cfg in (('encoder', encoder), ('decoder', decoder), ('bbox_head', bbox_head),
                          ('positional_encoding', positional_encoding), ('dn_cfg', dn_cfg)):
            if cfg is None:
                raise ValueError(f'DINO needs a {name} config')
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.with_box_refine = with_box_refine
        self.as_two_stage = as_two_stage
        self.backbone = MODELS.build(backbone)
        self.neck = MODELS.build(neck) if neck is not None else None
        head = dict(copy.deepcopy(bbox_head), share_pred_layer=False,
                    num_pred_layer=decoder['num_layers'] + 1, as_two_stage=True,
                    train_cfg=train_cfg, test_cfg=test_cfg)
        self.bbox_head = MODELS.build(head)
        self.positional_encoding = SinePositionalEncoding(**positional_encoding)
        self.encoder = DeformableDetrTransformerEncoder(**encoder)
        self.decoder = DinoTransformerDecoder(**decoder)
        self.embed_dims = c = self.encoder.embed_dims
        num_feats = self.positional_encoding.num_feats
        if num_feats * 2 != c:
            raise ValueError(f'DINO: positional_encoding.num_feats ({num_feats}) must be half '
                             f'of embed_dims ({c})')
        if self.bbox_head.embed_dims != c:
            raise ValueError(f'DINO: bbox_head.embed_dims ({self.bbox_head.embed_dims}) must '
                             f'equal the encoder embed_dims ({c})')
        self.query_embedding = nn.Embedding(num_queries, c)   # content queries only
        self.level_embed = nn.Parameter(torch.randn(num_feature_levels, c))
        self.memory_trans_fc = nn.Linear(c, c)
        self.memory_trans_norm = nn.LayerNorm(c)
        self.dn_query_generator = build_dn_generator(
            dn_cfg, num_classes=self.bbox_head.num_classes, embed_dims=c,
            num_matching_queries=num_queries, where='model.dn_cfg')

    def init_weights(self) -> None:
        """mmdet's: the children's own init (backbone, neck, head), then Xavier-uniform on every
        matrix of the encoder and decoder, the deformable attentions' init, Xavier on
        ``memory_trans_fc`` and ``query_embedding``, level embeddings ~ N(0, 1)."""
        super().init_weights()
        xavier_then_deformable_init(self.encoder, self.decoder)
        nn.init.xavier_uniform_(self.memory_trans_fc.weight)
        nn.init.xavier_uniform_(self.query_embedding.weight)
        nn.init.normal_(self.level_embed)

    def forward_transformer(self, feats: tuple[Tensor, ...], data_samples: SampleList,
                            with_denoising: bool) -> dict:
        """Encoder, query selection (plus denoising queries when training), decoder.

        -> dict(hidden_states (K, B, D + Q, C), references (K + 1, B, D + Q, 4),
                enc_outputs_class (B, Q, classes), enc_outputs_coord (B, Q, 4), dn_meta)
        """
        metas = [s.metainfo for s in data_samples]
        feats = list(feats)
        masks = image_masks(metas, feats)
        positions = [self.positional_encoding(m) for m in masks]
        enc = encode_levels(self.encoder, self.level_embed, feats, masks, positions)
        memory, proposals = encoder_output_proposals(enc.memory, enc.padding, enc.shapes)
        memory = self.memory_trans_norm(self.memory_trans_fc(memory))
        last = self.decoder.num_layers
        enc_class = self.bbox_head.cls_branches[last](memory)
        enc_coord_unact = self.bbox_head.reg_branches[last](memory) + proposals
        topk_score, topk_boxes, references = select_topk_proposals(
            enc_class, enc_coord_unact, self.num_queries)
        batch, num = references.shape[:2]
        query = self.query_embedding.weight[None, :num].expand(batch, -1, -1)
        dn_mask = dn_meta = None
        if with_denoising:
            dn_label_query, dn_bbox_query, dn_mask, dn_meta = self.dn_query_generator(
                data_samples)
            query = torch.cat([dn_label_query, query], 1)
            references = torch.cat([dn_bbox_query, references], 1)
            if num < self.num_queries:   # fewer tokens than queries: cut the mask to fit
                size = dn_meta['num_denoising_queries'] + num
                dn_mask = dn_mask[:size, :size]
        hidden_states, references = self.decoder(
            query, None, enc.memory, reference_points=references.sigmoid(),
            valid_ratios=enc.ratios, reg_branches=self.bbox_head.reg_branches,
            key_padding_mask=enc.padding, attn_masks=dn_mask,
            spatial_shapes=enc.spatial_shapes, level_start_index=enc.level_start_index)
        if with_denoising and dn_meta['num_denoising_queries'] == 0:
            # no ground truth in the batch: keep the label embedding in the graph (DDP)
            hidden_states = hidden_states + self.dn_query_generator.label_embedding.weight[
                0, 0] * 0.0
        return dict(hidden_states=hidden_states, references=references,
                    enc_outputs_class=topk_score, enc_outputs_coord=topk_boxes,
                    dn_meta=dn_meta)

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        out = self.forward_transformer(self.extract_feat(inputs), data_samples, True)
        cls_scores, bbox_preds = self.bbox_head(out['hidden_states'], out['references'])
        return self.bbox_head.loss_by_feat(
            cls_scores, bbox_preds, out['enc_outputs_class'], out['enc_outputs_coord'],
            [s.gt_instances for s in data_samples], [s.metainfo for s in data_samples],
            out['dn_meta'])

    def predict_in_input_frame(self, inputs: Tensor, data_samples: SampleList
                               ) -> tuple[list[InstanceData], None]:
        cls_scores, bbox_preds = self._forward(inputs, data_samples)
        return self.bbox_head.predict_by_feat(cls_scores[-1], bbox_preds[-1],
                                              [s.metainfo for s in data_samples]), None

    def _forward(self, inputs: Tensor, data_samples: SampleList | None = None):
        if data_samples is None:
            raise ValueError('DINO: mode="tensor" needs data_samples (image shapes)')
        out = self.forward_transformer(self.extract_feat(inputs), data_samples, False)
        return self.bbox_head(out['hidden_states'], out['references'])
