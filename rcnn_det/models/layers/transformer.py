"""Transformer layers of Deformable DETR and Co-DETR, with mmcv 1.x's child names.

A layer holds ``attentions`` (self- and/or cross-attention modules), ``ffns`` and ``norms``
(LayerNorms, in the order of ``operation_order``), so that official Co-DETR and mmdetection 2.x
Deformable-DETR checkpoints load with ``strict=True``:

    layers.{i}.attentions.0.attn.in_proj_weight     (nn.MultiheadAttention inside)
    layers.{i}.attentions.1.sampling_offsets.weight (MultiScaleDeformableAttention)
    layers.{i}.ffns.0.layers.0.0.weight             (Linear, then ReLU, Dropout)
    layers.{i}.ffns.0.layers.1.weight               (Linear, then Dropout)
    layers.{i}.norms.{j}.weight

Shape letters: B images, Q queries (or tokens), C = ``embed_dims``. Tensors are batch-first
((B, Q, C)) unless a module says otherwise; mmcv's seq-first layout is accepted through
``batch_first=False``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from rcnn_det.registry import MODELS

OPERATIONS = ('self_attn', 'cross_attn', 'norm', 'ffn')


def _activation(act_cfg: dict | None) -> nn.Module:
    cfg = dict(act_cfg or dict(type='ReLU'))
    kind = cfg.pop('type')
    if kind not in ('ReLU', 'GELU'):
        raise ValueError(f"FFN: act_cfg type must be 'ReLU' or 'GELU', got {kind!r}")
    return nn.ReLU(inplace=cfg.pop('inplace', False)) if kind == 'ReLU' else nn.GELU()


@MODELS.register_module()
class FFN(BaseModule):
    """mmcv's FFN: (num_fcs - 1) x [Linear, activation, Dropout], Linear, Dropout, + identity.

    forward(x (..., C), identity=None) -> (..., C)
    """

    def __init__(self, embed_dims: int = 256, feedforward_channels: int = 1024, num_fcs: int = 2,
                 act_cfg: dict | None = dict(type='ReLU', inplace=True), ffn_drop: float = 0.,
                 dropout_layer: dict | None = None, add_identity: bool = True,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_fcs < 2:
            raise ValueError(f'FFN: num_fcs must be >= 2, got {num_fcs}')
        self.embed_dims = embed_dims
        self.add_identity = add_identity
        blocks, in_channels = [], embed_dims
        for _ in range(num_fcs - 1):
            blocks.append(nn.Sequential(nn.Linear(in_channels, feedforward_channels),
                                        _activation(act_cfg), nn.Dropout(ffn_drop)))
            in_channels = feedforward_channels
        blocks += [nn.Linear(feedforward_channels, embed_dims), nn.Dropout(ffn_drop)]
        self.layers = nn.Sequential(*blocks)
        self.dropout_layer = _dropout(dropout_layer)

    def forward(self, x: Tensor, identity: Tensor | None = None) -> Tensor:
        out = self.dropout_layer(self.layers(x))
        if not self.add_identity:
            return out
        return (x if identity is None else identity) + out


def _dropout(cfg: dict | None) -> nn.Module:
    """mmcv's ``dropout_layer=dict(type='Dropout', drop_prob=p)`` (None: identity)."""
    if not cfg:
        return nn.Identity()
    cfg = dict(cfg)
    if cfg.pop('type', 'Dropout') != 'Dropout':
        raise ValueError("dropout_layer: only type='Dropout' is supported")
    return nn.Dropout(cfg.pop('drop_prob', 0.))


@MODELS.register_module()
class MultiheadAttention(BaseModule):
    """mmcv's wrapper of ``nn.MultiheadAttention`` (child ``attn``): positional embeddings
    added to query and key, dropout, and the residual.

    forward(query, key=None, value=None, identity=None, query_pos=None, key_pos=None,
            attn_mask=None, key_padding_mask=None) -> same shape as query
    ``key`` defaults to ``query``, ``value`` to ``key``, ``key_pos`` to ``query_pos`` when key
    and query have the same shape; ``identity`` (the residual) defaults to ``query`` without
    its positional embedding.
    """

    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float = 0.,
                 proj_drop: float = 0., dropout_layer: dict | None = dict(type='Dropout',
                                                                          drop_prob=0.),
                 batch_first: bool = False, init_cfg=None, dropout: float | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if dropout is not None:  # mmcv's older name: both the attention and the output dropout
            attn_drop = dropout
            dropout_layer = dict(type='Dropout', drop_prob=dropout)
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=attn_drop,
                                          batch_first=True)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dropout_layer = _dropout(dropout_layer)

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                identity: Tensor | None = None, query_pos: Tensor | None = None,
                key_pos: Tensor | None = None, attn_mask: Tensor | None = None,
                key_padding_mask: Tensor | None = None, **kwargs) -> Tensor:
        key = query if key is None else key
        value = key if value is None else value
        identity = query if identity is None else identity
        if key_pos is None and query_pos is not None and query_pos.shape == key.shape:
            key_pos = query_pos
        if query_pos is not None:
            query = query + query_pos
        if key_pos is not None:
            key = key + key_pos
        if not self.batch_first:  # (Q, B, C) -> (B, Q, C) for the batch-first attention
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        out = self.attn(query, key, value, attn_mask=attn_mask,
                        key_padding_mask=key_padding_mask, need_weights=False)[0]
        if not self.batch_first:
            out = out.transpose(0, 1)
        return identity + self.dropout_layer(self.proj_drop(out))


@MODELS.register_module()
class BaseTransformerLayer(BaseModule):
    """mmcv 1.x's transformer layer: runs ``operation_order``, e.g. ('self_attn', 'norm',
    'cross_attn', 'norm', 'ffn', 'norm') for a post-norm decoder layer.

    attn_cfgs: one config per attention operation, in order (one dict serves all of them);
        ffn_cfgs likewise per 'ffn' (``embed_dims`` defaults to the attention's). Every 'norm'
        is a LayerNorm(C).
    forward(query, key=None, value=None, query_pos=None, key_pos=None, attn_masks=None,
            query_key_padding_mask=None, key_padding_mask=None, **kwargs) -> query's shape.
    ``feedforward_channels``, ``ffn_dropout``, ``ffn_num_fcs``: the flat keys of mmdet 2.x
    configs (Deformable DETR, Co-DETR), written into every ``ffn_cfgs``.
    Self-attention attends query to itself (masked by ``query_key_padding_mask``);
    cross-attention attends query to key/value (``key_padding_mask``). Extra keyword
    arguments (reference_points, spatial_shapes, ...) reach every attention module.
    """

    def __init__(self, attn_cfgs: dict | list[dict], ffn_cfgs: dict | list[dict] = dict(
                 type='FFN', feedforward_channels=1024, num_fcs=2, ffn_drop=0.,
                 act_cfg=dict(type='ReLU', inplace=True)),
                 operation_order: tuple[str, ...] | None = None,
                 norm_cfg: dict = dict(type='LN'), batch_first: bool = False,
                 init_cfg=None, feedforward_channels: int | None = None,
                 ffn_dropout: float | None = None, ffn_num_fcs: int | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        ffn_cfgs = _with_flat_ffn_keys(ffn_cfgs, feedforward_channels, ffn_dropout, ffn_num_fcs)
        if not operation_order or set(operation_order) - set(OPERATIONS):
            raise ValueError(f'BaseTransformerLayer: operation_order must be a sequence of '
                             f'{OPERATIONS}, got {operation_order}')
        if dict(norm_cfg).get('type') != 'LN':
            raise ValueError("BaseTransformerLayer: only norm_cfg=dict(type='LN') is supported")
        self.operation_order = tuple(operation_order)
        self.batch_first = batch_first
        self.pre_norm = self.operation_order[0] == 'norm'
        num_attn = sum(op in ('self_attn', 'cross_attn') for op in self.operation_order)
        attn_cfgs = _per_operation(attn_cfgs, num_attn, 'attn_cfgs')
        ffn_cfgs = _per_operation(ffn_cfgs, self.operation_order.count('ffn'), 'ffn_cfgs')
        self.attentions = nn.ModuleList(
            MODELS.build(dict(cfg, batch_first=batch_first)) for cfg in attn_cfgs)
        self.embed_dims = self.attentions[0].embed_dims
        for cfg in ffn_cfgs:
            cfg.setdefault('embed_dims', self.embed_dims)
            if cfg['embed_dims'] != self.embed_dims:
                raise ValueError(f"BaseTransformerLayer: ffn_cfgs embed_dims {cfg['embed_dims']} "
                                 f'differs from the attention embed_dims {self.embed_dims}')
        self.ffns = nn.ModuleList(MODELS.build(cfg) for cfg in ffn_cfgs)
        self.norms = nn.ModuleList(nn.LayerNorm(self.embed_dims)
                                   for _ in range(self.operation_order.count('norm')))

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                query_pos: Tensor | None = None, key_pos: Tensor | None = None,
                attn_masks: list[Tensor | None] | Tensor | None = None,
                query_key_padding_mask: Tensor | None = None,
                key_padding_mask: Tensor | None = None, **kwargs) -> Tensor:
        num_attn = len(self.attentions)
        if attn_masks is None or isinstance(attn_masks, Tensor):
            attn_masks = [attn_masks] * num_attn
        attn_index = norm_index = ffn_index = 0
        identity = query
        for op in self.operation_order:
            if op == 'norm':
                query = self.norms[norm_index](query)
                norm_index += 1
            elif op == 'ffn':
                query = self.ffns[ffn_index](query, identity if self.pre_norm else None)
                ffn_index += 1
            else:
                is_self = op == 'self_attn'
                query = self.attentions[attn_index](
                    query, query if is_self else key, query if is_self else value,
                    identity if self.pre_norm else None, query_pos=query_pos,
                    key_pos=query_pos if is_self else key_pos,
                    attn_mask=attn_masks[attn_index],
                    key_padding_mask=query_key_padding_mask if is_self else key_padding_mask,
                    **kwargs)
                attn_index += 1
                identity = query
        return query


def _with_flat_ffn_keys(ffn_cfgs: dict | list[dict], feedforward_channels: int | None,
                        ffn_dropout: float | None, ffn_num_fcs: int | None) -> dict | list[dict]:
    flat = dict(feedforward_channels=feedforward_channels, ffn_drop=ffn_dropout,
                num_fcs=ffn_num_fcs)
    flat = {k: v for k, v in flat.items() if v is not None}
    if isinstance(ffn_cfgs, dict):
        return dict(ffn_cfgs, **flat)
    return [dict(cfg, **flat) for cfg in ffn_cfgs]


def _per_operation(cfgs: dict | list[dict], count: int, name: str) -> list[dict]:
    if isinstance(cfgs, dict):
        return [copy.deepcopy(cfgs) for _ in range(count)]
    cfgs = list(cfgs)
    if len(cfgs) != count:
        raise ValueError(f'BaseTransformerLayer: {name} has {len(cfgs)} configs for {count} '
                         'operations in operation_order')
    return [copy.deepcopy(cfg) for cfg in cfgs]


@MODELS.register_module()
class DetrTransformerDecoderLayer(BaseTransformerLayer):
    """mmcv 1.x's decoder layer: a BaseTransformerLayer with self-attention, cross-attention,
    an FFN and three norms (in the order ``operation_order`` gives)."""

    def __init__(self, attn_cfgs, operation_order=None, **kwargs) -> None:
        if operation_order is None or sorted(operation_order) != sorted(
                ('self_attn', 'norm', 'cross_attn', 'norm', 'ffn', 'norm')):
            raise ValueError('DetrTransformerDecoderLayer: operation_order must hold self_attn, '
                             f'cross_attn, ffn and three norms, got {operation_order}')
        super().__init__(attn_cfgs, operation_order=operation_order, **kwargs)


@MODELS.register_module()
class DetrTransformerEncoder(BaseModule):
    """mmcv 1.x's encoder: ``num_layers`` copies of ``transformerlayers`` (child ``layers``),
    then, for pre-norm layers only, a final LayerNorm (``post_norm``); post-norm layers
    (DETR, Deformable DETR, Co-DETR) end normalised already and get none, as in mmdet 2.x.

    forward(query, key=None, value=None, query_pos=None, ...) -> query's shape; every keyword
    reaches every layer.

    ``with_cp``: the first ``with_cp`` layers keep no activations in training and recompute
    them in the backward pass (Co-DINO's memory switch; the official code needs fairscale for
    it, rcnn_det uses ``torch.utils.checkpoint``).
    """

    def __init__(self, transformerlayers: dict, num_layers: int,
                 post_norm_cfg: dict | None = dict(type='LN'), with_cp: int = -1,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.layers = nn.ModuleList(MODELS.build(copy.deepcopy(transformerlayers))
                                    for _ in range(num_layers))
        self.num_layers = num_layers
        self.with_cp = with_cp
        self.embed_dims = self.layers[0].embed_dims
        pre_norm = self.layers[0].pre_norm
        if post_norm_cfg is not None and dict(post_norm_cfg).get('type') != 'LN':
            raise ValueError('DetrTransformerEncoder: post_norm_cfg must be None or '
                             "dict(type='LN')")
        if pre_norm and post_norm_cfg is None:
            raise ValueError('DetrTransformerEncoder: pre-norm layers need a post_norm_cfg '
                             "(dict(type='LN')) to normalise their output")
        self.post_norm = nn.LayerNorm(self.embed_dims) if pre_norm else None

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                **kwargs) -> Tensor:
        query = run_layers(self.layers, self.with_cp, query, key, value, **kwargs)
        return self.post_norm(query) if self.post_norm is not None else query


def run_layers(layers: nn.ModuleList, num_checkpointed: int, query: Tensor, *args,
               **kwargs) -> Tensor:
    """``query`` through every layer; while training with gradients, the first
    ``num_checkpointed`` layers keep no activations and recompute them in the backward pass
    (``torch.utils.checkpoint``)."""
    recompute = (layers.training and torch.is_grad_enabled()
                 and any(p.requires_grad for p in layers.parameters()))
    for k, layer in enumerate(layers):
        if recompute and k < num_checkpointed:
            query = checkpoint(layer, query, *args, use_reentrant=False, **kwargs)
        else:
            query = layer(query, *args, **kwargs)
    return query
