"""DINO's decoder (Zhang et al., 2023) and the layers of mmdetection 3.x's transformer layout.

Two checkpoint layouts exist for the same computation, and both load unchanged:

- the official / mmcv 1.x layout of Co-DINO (``query_head.transformer.*``): layers with
  ``attentions.{0,1}``, ``ffns.0``, ``norms.*`` (``BaseTransformerLayer``), the decoder's
  ``ref_point_head`` an ``nn.Sequential`` (``ref_point_head.0``, ``ref_point_head.2``);
- mmdetection 3.x's layout of DINO (``encoder.*``, ``decoder.*`` on the detector): layers with
  ``self_attn``, ``cross_attn``, ``ffn``, ``norms.*``, ``ref_point_head`` an ``MLP``
  (``ref_point_head.layers.{0,1}``).

``DinoTransformerDecoder`` builds the first from ``transformerlayers`` and the second from
``layer_cfg``; its forward is the same. Shape letters: B images, Q queries, L levels, C =
``embed_dims``, K decoder layers; boxes are normalised (cx, cy, w, h).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor

from rcnn_det.registry import MODELS

from .deformable_transformer import inverse_sigmoid
from .ms_deform_attn import MultiScaleDeformableAttention
from .positional_encoding import sin_cos
from .transformer import FFN, MultiheadAttention, run_layers

REFINE_EPS = 1e-3   # DINO's inverse_sigmoid clamp when refining boxes


def coordinate_sine_embed(coords: Tensor, num_feats: int = 128,
                          temperature: int = 10000) -> Tensor:
    """(B, Q, 2 or 4) normalised (x, y[, w, h]) -> (B, Q, 2 or 4 * num_feats): each
    coordinate * 2 pi embedded as ``SinePositionalEncoding`` embeds a position, concatenated in
    the order y, x[, w, h] (DINO's)."""
    k = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    freqs = temperature ** (2 * (k // 2) / num_feats)
    embeds = sin_cos(coords * (2 * math.pi), freqs)                   # (B, Q, 2 or 4, F)
    order = [1, 0, 2, 3][:coords.shape[-1]]
    return embeds[..., order, :].flatten(-2)


class MLP(BaseModule):
    """mmdetection's MLP: ``num_layers`` Linears (child ``layers``), ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int,
                 num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for k, layer in enumerate(self.layers):
            x = layer(x) if k == len(self.layers) - 1 else F.relu(layer(x))
        return x


class Mmdet3TransformerLayer(BaseModule):
    """A post-norm layer with mmdetection 3.x's child names: ``self_attn``, optional
    ``cross_attn``, ``ffn``, ``norms`` (one LayerNorm after each). Its forward takes the
    arguments of ``BaseTransformerLayer`` (``attn_masks`` masks the self-attention), so one
    encoder or decoder drives either layout."""

    def __init__(self, self_attn: nn.Module, ffn_cfg: dict, cross_attn: nn.Module | None = None,
                 norm_cfg: dict | None = None) -> None:
        super().__init__()
        if norm_cfg is not None and dict(norm_cfg).get('type') != 'LN':
            raise ValueError("transformer layer: only norm_cfg=dict(type='LN') is supported")
        self.self_attn = self_attn
        self.embed_dims = self_attn.embed_dims
        if cross_attn is not None:
            self.cross_attn = cross_attn
        self.ffn = FFN(**dict(dict(embed_dims=self.embed_dims), **ffn_cfg))
        self.norms = nn.ModuleList(nn.LayerNorm(self.embed_dims)
                                   for _ in range(3 if cross_attn is not None else 2))

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                query_pos: Tensor | None = None, key_pos: Tensor | None = None,
                attn_masks: Tensor | list | None = None,
                query_key_padding_mask: Tensor | None = None,
                key_padding_mask: Tensor | None = None, **kwargs) -> Tensor:
        self_mask = attn_masks[0] if isinstance(attn_masks, (list, tuple)) else attn_masks
        query = self.norms[0](self.self_attn(
            query, query, query, query_pos=query_pos, key_pos=query_pos, attn_mask=self_mask,
            key_padding_mask=query_key_padding_mask, **kwargs))
        if hasattr(self, 'cross_attn'):
            query = self.norms[1](self.cross_attn(
                query, key, value, query_pos=query_pos, key_pos=key_pos,
                key_padding_mask=key_padding_mask, **kwargs))
        return self.norms[-1](self.ffn(query))


def deformable_encoder_layer(self_attn_cfg: dict, ffn_cfg: dict,
                             norm_cfg: dict | None = None) -> Mmdet3TransformerLayer:
    """mmdetection 3.x's ``DeformableDetrTransformerEncoderLayer``."""
    attn = MultiScaleDeformableAttention(**dict(self_attn_cfg, batch_first=True))
    return Mmdet3TransformerLayer(attn, ffn_cfg, norm_cfg=norm_cfg)


def deformable_decoder_layer(self_attn_cfg: dict, cross_attn_cfg: dict, ffn_cfg: dict,
                             norm_cfg: dict | None = None) -> Mmdet3TransformerLayer:
    """mmdetection 3.x's ``DeformableDetrTransformerDecoderLayer``."""
    self_attn = MultiheadAttention(**dict(self_attn_cfg, batch_first=True))
    cross_attn = MultiScaleDeformableAttention(**dict(cross_attn_cfg, batch_first=True))
    return Mmdet3TransformerLayer(self_attn, ffn_cfg, cross_attn=cross_attn, norm_cfg=norm_cfg)


class DeformableDetrTransformerEncoder(BaseModule):
    """mmdetection 3.x's encoder (child ``layers``): ``num_layers`` deformable self-attention
    layers built from ``layer_cfg``; ``num_cp`` of them checkpointed (Co-DINO's ``with_cp``).

    forward(query (B, N, C), key=None, value=None, **layer kwargs) -> (B, N, C)
    """

    def __init__(self, num_layers: int, layer_cfg: dict, num_cp: int = -1,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        layer_cfg = copy.deepcopy(dict(layer_cfg))
        self.layers = nn.ModuleList(deformable_encoder_layer(**layer_cfg)
                                    for _ in range(num_layers))
        self.num_layers = num_layers
        self.embed_dims = self.layers[0].embed_dims
        self.num_cp = num_layers if num_cp > num_layers else num_cp

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                **kwargs) -> Tensor:
        return run_layers(self.layers, self.num_cp, query, key, value, **kwargs)


@MODELS.register_module()
class DinoTransformerDecoder(BaseModule):
    """DINO's decoder: before each layer the queries' positional embedding is computed from
    their current reference boxes (``ref_point_head`` of their sine embedding); after it,
    ``reg_branches[k]`` refines the boxes, and the refinement (not detached: "look forward
    twice") is what the head predicts from, while the next layer starts from it detached.

    Built from ``transformerlayers`` (official / mmcv 1.x layout: Co-DINO) or ``layer_cfg``
    (mmdetection 3.x layout: DINO).

    forward(query (B, Q, C), key=None, value (B, N, C), *, reference_points (B, Q, 4),
            valid_ratios (B, L, 2), reg_branches, **layer kwargs) ->
        (hidden states (K, B, Q, C), each layer's output through ``norm``,
         references (K + 1, B, Q, 4): the initial boxes, then each layer's refinement)
    """

    def __init__(self, num_layers: int, transformerlayers: dict | None = None,
                 layer_cfg: dict | None = None, return_intermediate: bool = True,
                 post_norm_cfg: dict | None = None, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if (transformerlayers is None) == (layer_cfg is None):
            raise ValueError('DinoTransformerDecoder: give transformerlayers (official layout) '
                             'or layer_cfg (mmdetection 3.x layout), not both')
        if not return_intermediate:
            raise ValueError('DinoTransformerDecoder: return_intermediate must be True (every '
                             'layer is supervised)')
        if post_norm_cfg is not None:
            raise ValueError('DinoTransformerDecoder: post_norm_cfg must be None (the decoder '
                             'has its own norm)')
        if transformerlayers is not None:
            self.layers = nn.ModuleList(
                MODELS.build(dict(copy.deepcopy(transformerlayers), batch_first=True))
                for _ in range(num_layers))
        else:
            self.layers = nn.ModuleList(deformable_decoder_layer(**copy.deepcopy(layer_cfg))
                                        for _ in range(num_layers))
        self.num_layers = num_layers
        self.embed_dims = c = self.layers[0].embed_dims
        self.return_intermediate = return_intermediate
        if transformerlayers is not None:
            self.ref_point_head = nn.Sequential(nn.Linear(2 * c, c), nn.ReLU(), nn.Linear(c, c))
        else:
            self.ref_point_head = MLP(2 * c, c, c, 2)
        self.norm = nn.LayerNorm(c)

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None, *,
                reference_points: Tensor, valid_ratios: Tensor,
                reg_branches: nn.ModuleList, **kwargs) -> tuple[Tensor, Tensor]:
        if reference_points.shape[-1] != 4:
            raise ValueError('DinoTransformerDecoder: reference_points must be boxes (B, Q, 4)')
        kwargs.pop('query_pos', None)   # computed here from the reference boxes
        scale = torch.cat([valid_ratios, valid_ratios], -1)[:, None]        # (B, 1, L, 4)
        states, references = [], [reference_points]
        for k, layer in enumerate(self.layers):
            level_boxes = reference_points[:, :, None] * scale               # (B, Q, L, 4)
            query_pos = self.ref_point_head(
                coordinate_sine_embed(level_boxes[:, :, 0], self.embed_dims // 2))
            query = layer(query, key, value, query_pos=query_pos,
                          reference_points=level_boxes, **kwargs)
            refined = (reg_branches[k](query)
                       + inverse_sigmoid(reference_points, eps=REFINE_EPS)).sigmoid()
            reference_points = refined.detach()
            states.append(self.norm(query))
            references.append(refined)
        return torch.stack(states), torch.stack(references)


def select_topk_proposals(enc_class: Tensor, enc_coord_unact: Tensor, k: int
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """DINO's query selection: the ``k`` encoder tokens whose best class logit is highest
    (Deformable DETR ranks by the class-0 logit).

    enc_class (B, N, C), enc_coord_unact (B, N, 4) -> (their logits (B, k, C), their boxes
    (B, k, 4) sigmoid, trained by the encoder loss, and the same boxes unactivated and
    detached: the decoder's initial references)."""
    k = min(k, enc_class.shape[1])            # tiny inputs have fewer tokens than queries
    top = enc_class.max(-1).values.topk(k, dim=1).indices                 # (B, k)
    scores = enc_class.gather(1, top[..., None].expand(-1, -1, enc_class.shape[-1]))
    coords = enc_coord_unact.gather(1, top[..., None].expand(-1, -1, 4))
    return scores, coords.sigmoid(), coords.detach()
