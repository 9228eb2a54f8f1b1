"""mmcv 1.x transformer bricks (FFN, MultiheadAttention, BaseTransformerLayer and the two DETR
layers) against mmcv's own classes from mmcv-lite: the same config builds both, mmcv's state dict
loads into ours with ``strict=True`` (same child names and shapes), and the outputs agree in eval
mode. Layers holding MultiScaleDeformableAttention (absent from mmcv-lite) are checked against a
hand-composed run of their sub-modules in the documented order, and the Co-DETR-sized encoder
and decoder layer against the official checkpoint keys (docs/co_detr.md, "Checkpoint names,
shapes and counts").
The FFN width and the encoder's final norm follow mmcv / mmdet 2.x (tests at the end).

Shape letters: B = 2 images, Q queries, K keys, C = embed_dims; seq-first tensors are (Q, B, C).
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from rcnn_det.models.layers import (FFN, BaseTransformerLayer, DetrTransformerDecoderLayer,
                                    DetrTransformerEncoder, MultiheadAttention,
                                    MultiScaleDeformableAttention)
from rcnn_det.registry import MODELS

with warnings.catch_warnings():  # mmcv-lite warns that it has no MultiScaleDeformableAttention
    warnings.simplefilter('ignore')
    mmcv_bricks = pytest.importorskip('mmcv.cnn.bricks.transformer')

B, Q, K, C = 2, 5, 7, 16
ATOL = 1e-5
POST_NORM = ('self_attn', 'norm', 'ffn', 'norm')
PRE_NORM = ('norm', 'self_attn', 'norm', 'ffn')
DECODER = ('self_attn', 'norm', 'cross_attn', 'norm', 'ffn', 'norm')
SHAPES = [(4, 5), (2, 3)]  # (H_l, W_l) of the two MultiScaleDeformableAttention levels
N_V = sum(h * w for h, w in SHAPES)


@pytest.fixture(scope='module', autouse=True)
def single_thread():
    """These tensors are tiny: intra-op threads only add synchronisation, which costs 100x on a
    busy machine. Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def seq(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """(B, n, C) -> the module's layout."""
    return x if batch_first else x.transpose(0, 1)


def mmcv_quiet(fn, *args, **kwargs):
    """mmcv warns about deprecated keys, a shared attn_mask and a missing key_pos."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return fn(*args, **kwargs)


def load_from_mmcv(ref: nn.Module, ours: nn.Module) -> None:
    """mmcv's weights into ours; strict=True proves the names and shapes are mmcv's."""
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.eval()
    ours.eval()


def randomise(module: nn.Module, seed: int) -> None:
    """Non-trivial values everywhere (LayerNorm affine and zero-initialised offsets included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=1e-5)


def dropout_probabilities(module: nn.Module) -> list[float]:
    """Every Dropout in module order (mmcv's Dropout subclasses nn.Dropout): eval-mode outputs
    cannot see them."""
    return [m.p for m in module.modules() if isinstance(m, nn.Dropout)]


# ----------------------------------------------------------------------------------- FFN


@pytest.mark.parametrize('num_fcs,add_identity,explicit_identity,extra', [
    (2, True, False, {}),
    (2, True, True, {}),
    (2, False, False, {}),
    (3, True, True, dict(act_cfg=dict(type='GELU'))),
    (3, False, True, dict(dropout_layer=dict(type='Dropout', drop_prob=0.2))),
    (3, True, False, dict(ffn_drop=0.3)),
])
def test_ffn_matches_mmcv(num_fcs, add_identity, explicit_identity, extra):
    cfg = dict(embed_dims=C, feedforward_channels=24, num_fcs=num_fcs, add_identity=add_identity,
               **extra)
    torch.manual_seed(0)
    ref = mmcv_bricks.FFN(**cfg)
    ours = FFN(**cfg)
    load_from_mmcv(ref, ours)
    x = randn(B, Q, C, seed=1)
    identity = randn(B, Q, C, seed=2) if explicit_identity else None
    expected = ref(x, identity)
    out = ours(x, identity)
    assert_close(out, expected)
    # the identity really matters (or really is absent)
    without_residual = ours.layers(x)
    if add_identity:
        assert_close(out - without_residual, x if identity is None else identity)
    else:
        assert_close(out, without_residual)
    assert len(ours.layers) == num_fcs + 1  # (num_fcs - 1) blocks, Linear, Dropout
    assert dropout_probabilities(ours) == dropout_probabilities(ref)


# ------------------------------------------------------------------------ MultiheadAttention

# (key, value, query_pos, key_pos, key_padding_mask, attn_mask, identity) used by each case
MHA_CASES = {
    'self_plain': ('self', None, False, False, False, None, False),
    'self_plain_padding': ('self', None, False, False, True, None, False),
    'self_query_pos': ('self', None, True, False, False, None, False),
    'self_key_pos_only': ('self', None, False, True, False, None, False),
    'self_both_pos_bool_mask': ('self', None, True, True, False, 'bool', False),
    'self_padding_identity': ('self', None, True, False, True, None, True),
    'cross_query_pos_only': ('cross', None, True, False, False, None, False),
    'cross_key_pos_only': ('cross', None, False, True, True, None, False),
    'cross_both_value_masks': ('cross', 'value', True, True, True, 'bool', False),
    'cross_value_float_mask': ('cross', 'value', True, True, False, 'float', False),
}


def attention_inputs(case: str, batch_first: bool) -> tuple[tuple, dict]:
    kind, value_kind, q_pos, k_pos, padding, mask, identity = MHA_CASES[case]
    n_keys = Q if kind == 'self' else K
    query = randn(B, Q, C, seed=1)
    key = None if kind == 'self' else randn(B, n_keys, C, seed=2)
    value = randn(B, n_keys, C, seed=3) if value_kind == 'value' else None
    kwargs = dict(query_pos=randn(B, Q, C, seed=4) if q_pos else None,
                  key_pos=randn(B, n_keys, C, seed=5) if k_pos else None,
                  identity=randn(B, Q, C, seed=6) if identity else None)
    kwargs = {k: None if v is None else seq(v, batch_first) for k, v in kwargs.items()}
    if padding:  # image 1 ignores its last two keys
        kwargs['key_padding_mask'] = torch.zeros(B, n_keys, dtype=torch.bool)
        kwargs['key_padding_mask'][1, -2:] = True
    if mask is not None:  # (Q, n_keys), True = not attended; key 0 always allowed
        blocked = torch.rand(Q, n_keys, generator=torch.Generator().manual_seed(7)) < 0.4
        blocked[:, 0] = False
        kwargs['attn_mask'] = blocked if mask == 'bool' else blocked.float() * -3.0
    args = tuple(None if t is None else seq(t, batch_first) for t in (query, key, value))
    return args, kwargs


@pytest.mark.parametrize('batch_first', [True, False])
@pytest.mark.parametrize('case', list(MHA_CASES))
def test_multihead_attention_matches_mmcv(case, batch_first):
    torch.manual_seed(0)
    ref = mmcv_bricks.MultiheadAttention(C, 4, batch_first=batch_first)
    ours = MultiheadAttention(C, 4, batch_first=batch_first)
    randomise(ref, seed=8)  # non-zero in_proj_bias too
    load_from_mmcv(ref, ours)
    assert dropout_probabilities(ours) == dropout_probabilities(ref)
    args, kwargs = attention_inputs(case, batch_first)
    expected = mmcv_quiet(ref, *args, **kwargs)
    out = ours(*args, **kwargs)
    assert out.shape == args[0].shape
    assert_close(out, expected)
    with torch.no_grad():  # inference: nn.MultiheadAttention may take its fused fast path
        assert_close(ours(*args, **kwargs), expected)


def test_multihead_attention_positional_embeddings_and_residual():
    """Positions enter query and key only; the residual is the query without its embedding."""
    torch.manual_seed(0)
    ours = MultiheadAttention(C, 4, batch_first=True).eval()
    query, key, value = randn(B, Q, C, seed=1), randn(B, K, C, seed=2), randn(B, K, C, seed=3)
    q_pos, k_pos = randn(B, Q, C, seed=4), randn(B, K, C, seed=5)

    def attn(q, k, v):  # the inner nn.MultiheadAttention, whatever its own layout
        layout = (lambda t: t) if ours.attn.batch_first else (lambda t: t.transpose(0, 1))
        return layout(ours.attn(layout(q), layout(k), layout(v), need_weights=False)[0])

    assert_close(ours(query, key, value, query_pos=q_pos, key_pos=k_pos),
                 query + attn(query + q_pos, key + k_pos, value))
    # self-attention: key_pos defaults to query_pos, value to the key without its embedding
    assert_close(ours(query, query_pos=q_pos),
                 query + attn(query + q_pos, query + q_pos, query))
    # cross-attention with keys of another length: query_pos is not reused for the key
    assert_close(ours(query, key, query_pos=q_pos), query + attn(query + q_pos, key, key))


def test_multihead_attention_legacy_dropout_argument():
    """``dropout=p`` sets attention dropout and the output dropout_layer, as in mmcv."""
    torch.manual_seed(0)
    ref = mmcv_quiet(mmcv_bricks.MultiheadAttention, C, 4, dropout=0.3,
                     dropout_layer=dict(type='Dropout', drop_prob=0.))  # mmcv edits this dict
    ours = MultiheadAttention(C, 4, dropout=0.3)
    for module in (ref, ours):
        assert module.attn.dropout == 0.3
        assert module.dropout_layer.p == 0.3
        assert module.proj_drop.p == 0.0
    assert dropout_probabilities(ours) == dropout_probabilities(ref)
    load_from_mmcv(ref, ours)
    args, kwargs = attention_inputs('cross_both_value_masks', batch_first=False)
    assert_close(ours(*args, **kwargs), mmcv_quiet(ref, *args, **kwargs))
    eval_out = ours(*args, **kwargs)
    ours.train()  # and the dropout is live in training
    assert not torch.allclose(ours(*args, **kwargs), eval_out)


# ---------------------------------------------------------------- BaseTransformerLayer vs mmcv


def layer_cfg(order, batch_first, attn_cfgs=None, ffn_dropout=0.0):
    """Flat legacy FFN keys as in mmdet 2.x configs. ``ffn_cfgs`` names embed_dims only because
    both mmcv's and our default FFN config say 256 (mmcv mutates this dict: build one per use)."""
    if attn_cfgs is None:
        attn_cfgs = dict(type='MultiheadAttention', embed_dims=C, num_heads=4)
    return dict(attn_cfgs=attn_cfgs, ffn_cfgs=dict(type='FFN', embed_dims=C),
                feedforward_channels=24, ffn_dropout=ffn_dropout, operation_order=order,
                batch_first=batch_first)


def build_pair(order, batch_first, attn_cfgs=None, ours_cls=BaseTransformerLayer):
    """ffn_dropout=0.1 only checks that the flat key reaches the FFN (outputs are eval-mode)."""
    torch.manual_seed(0)
    ref = mmcv_quiet(mmcv_bricks.BaseTransformerLayer,
                     **layer_cfg(order, batch_first, attn_cfgs, ffn_dropout=0.1))
    cfg = layer_cfg(order, batch_first, attn_cfgs, ffn_dropout=0.1)
    ours = ours_cls(**cfg)
    assert cfg == layer_cfg(order, batch_first, attn_cfgs, ffn_dropout=0.1)  # not edited
    assert all(type(a) is MultiheadAttention for a in ours.attentions)  # ours, not mmcv's
    randomise(ref, seed=9)
    load_from_mmcv(ref, ours)
    assert ours.ffns[0].layers[0][0].out_features == 24  # the flat key reached the FFN
    assert dropout_probabilities(ours) == dropout_probabilities(ref)
    return ref, ours


@pytest.mark.parametrize('batch_first', [True, False])
@pytest.mark.parametrize('order', [
    POST_NORM, PRE_NORM, ('self_attn', 'norm', 'self_attn', 'norm', 'ffn', 'norm')],
    ids=['post_norm', 'pre_norm', 'two_self_attn'])
def test_encoder_layer_matches_mmcv(order, batch_first):
    ref, ours = build_pair(order, batch_first)
    query = seq(randn(B, Q, C, seed=1), batch_first)
    padding = torch.zeros(B, Q, dtype=torch.bool)
    padding[1, -2:] = True
    kwargs = dict(query_pos=seq(randn(B, Q, C, seed=2), batch_first),
                  query_key_padding_mask=padding)
    assert_close(ours(query, **kwargs), mmcv_quiet(ref, query, **kwargs))
    # one attn_mask tensor serves every attention (both, in two_self_attn)
    mask = torch.rand(Q, Q, generator=torch.Generator().manual_seed(3)) < 0.4
    mask.fill_diagonal_(False)
    assert_close(ours(query, attn_masks=mask, **kwargs),
                 mmcv_quiet(ref, query, attn_masks=mask, **kwargs))


DECODER_ATTNS = [dict(type='MultiheadAttention', embed_dims=C, num_heads=4),
                 dict(type='MultiheadAttention', embed_dims=C, num_heads=2)]


@pytest.mark.parametrize('batch_first', [True, False])
@pytest.mark.parametrize('order,ours_cls', [
    (DECODER, DetrTransformerDecoderLayer),
    (DECODER, BaseTransformerLayer),
    (('norm', 'self_attn', 'norm', 'cross_attn', 'norm', 'ffn'), BaseTransformerLayer),
], ids=['detr_decoder_layer', 'base_layer', 'pre_norm'])
def test_decoder_layer_matches_mmcv(order, ours_cls, batch_first):
    ref, ours = build_pair(order, batch_first, [dict(c) for c in DECODER_ATTNS], ours_cls)
    assert [a.num_heads for a in ours.attentions] == [4, 2]  # attn_cfgs kept in order
    query = seq(randn(B, Q, C, seed=1), batch_first)
    memory = seq(randn(B, K, C, seed=2), batch_first)
    query_padding = torch.zeros(B, Q, dtype=torch.bool)
    query_padding[0, -1] = True
    key_padding = torch.zeros(B, K, dtype=torch.bool)
    key_padding[1, -3:] = True
    self_mask = torch.rand(Q, Q, generator=torch.Generator().manual_seed(3)) < 0.4
    self_mask.fill_diagonal_(False)
    kwargs = dict(query_pos=seq(randn(B, Q, C, seed=4), batch_first),
                  key_pos=seq(randn(B, K, C, seed=5), batch_first),
                  attn_masks=[self_mask, None], query_key_padding_mask=query_padding,
                  key_padding_mask=key_padding)
    for value in (memory, seq(randn(B, K, C, seed=6), batch_first)):  # value = key, then not
        expected = mmcv_quiet(ref, query, memory, value, **kwargs)
        assert_close(ours(query, memory, value, **kwargs), expected)


# ---------------------------------------------- layers with MultiScaleDeformableAttention


def msda_cfg(**kwargs):
    return dict(type='MultiScaleDeformableAttention', embed_dims=C, num_heads=4, num_levels=2,
                num_points=2, dropout=0.0, **kwargs)


def msda_kwargs(n_queries: int, ref_dim: int, seed: int) -> dict:
    sizes = torch.tensor([h * w for h, w in SHAPES])
    padding = torch.zeros(B, N_V, dtype=torch.bool)
    padding[1, 15:20] = True  # some tokens of image 1's first level
    return dict(reference_points=torch.rand(B, n_queries, len(SHAPES), ref_dim,
                                            generator=torch.Generator().manual_seed(seed)),
                spatial_shapes=torch.tensor(SHAPES),
                level_start_index=torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]]),
                valid_ratios=torch.ones(B, len(SHAPES), 2))  # as the transformer passes it


def ffn_residual(ffn: FFN, x: torch.Tensor) -> torch.Tensor:
    return x + ffn.layers(x)


def encoder_layer_reference(layer, t, pos, padding, kw):
    """t <- norms[0](t + MSDA(query=t + pos, value=t)); t <- norms[1](t + FFN(t))."""
    zeros = torch.zeros_like(t)
    msda = layer.attentions[0](t, value=t, identity=zeros, query_pos=pos,
                               key_padding_mask=padding, **kw)
    t = layer.norms[0](t + msda)
    return layer.norms[1](ffn_residual(layer.ffns[0], t)), msda


def msda_encoder_layer(batch_first):
    torch.manual_seed(0)
    layer = BaseTransformerLayer(**layer_cfg(POST_NORM, batch_first, msda_cfg()))
    randomise(layer, seed=9)
    return layer.eval()


@pytest.mark.parametrize('batch_first', [True, False])
def test_deformable_encoder_layer_matches_documented_order(batch_first):
    layer = msda_encoder_layer(batch_first)
    assert type(layer.attentions[0]) is MultiScaleDeformableAttention
    assert layer.attentions[0].batch_first == batch_first  # the layer's layout reaches it
    t = seq(randn(B, N_V, C, seed=1), batch_first)
    pos = seq(randn(B, N_V, C, seed=2), batch_first)
    kw = msda_kwargs(N_V, 2, seed=3)
    padding = torch.zeros(B, N_V, dtype=torch.bool)
    padding[1, 15:20] = True
    out = layer(t, query_pos=pos, query_key_padding_mask=padding, **kw)
    expected, msda = encoder_layer_reference(layer, t, pos, padding, kw)
    assert_close(out, expected)
    # the residual is the query WITHOUT its positional embedding (the difference is visible)
    wrong = layer.norms[1](ffn_residual(layer.ffns[0], layer.norms[0](t + pos + msda)))
    assert (out - wrong).abs().max() > 1e-2
    # and the padding mask reached the attention
    assert (layer(t, query_pos=pos, **kw) - out).abs().max() > 1e-3


def test_deformable_encoder_stacks_layers():
    """Deformable DETR's encoder: the layers in turn, every keyword to every layer, no norm."""
    batch_first = False
    torch.manual_seed(0)
    layers_cfg = dict(type='BaseTransformerLayer', **layer_cfg(POST_NORM, batch_first, msda_cfg()))
    encoder = DetrTransformerEncoder(layers_cfg, num_layers=2)
    randomise(encoder, seed=9)
    encoder.eval()
    assert encoder.post_norm is None and encoder.num_layers == 2
    t = seq(randn(B, N_V, C, seed=1), batch_first)
    pos = seq(randn(B, N_V, C, seed=2), batch_first)
    padding = torch.zeros(B, N_V, dtype=torch.bool)
    padding[0, :3] = True
    kw = msda_kwargs(N_V, 2, seed=3)
    out = encoder(t, None, None, query_pos=pos, query_key_padding_mask=padding, **kw)
    expected = t
    for layer in encoder.layers:
        expected = encoder_layer_reference(layer, expected, pos, padding, kw)[0]
    assert_close(out, expected)


def test_encoder_post_norm_after_pre_norm_layers():
    """post_norm_cfg=dict(type='LN') on pre-norm layers: a final LayerNorm (post_norm.*)."""
    torch.manual_seed(0)
    layers_cfg = dict(type='BaseTransformerLayer', **layer_cfg(PRE_NORM, True))
    encoder = DetrTransformerEncoder(layers_cfg, num_layers=2, post_norm_cfg=dict(type='LN'))
    randomise(encoder, seed=9)
    encoder.eval()
    assert {k for k in encoder.state_dict() if not k.startswith('layers.')} == {
        'post_norm.weight', 'post_norm.bias'}
    query, pos = randn(B, Q, C, seed=1), randn(B, Q, C, seed=2)
    expected = encoder.layers[1](encoder.layers[0](query, query_pos=pos), query_pos=pos)
    assert_close(encoder(query, query_pos=pos), encoder.post_norm(expected))


@pytest.mark.parametrize('ref_dim', [4, 2])
@pytest.mark.parametrize('batch_first', [True, False])
def test_deformable_decoder_layer_matches_documented_order(batch_first, ref_dim):
    """q <- LN0(q + MHA(q + pos, q + pos, q)); q <- LN1(q + MSDA(q + pos, value=memory));
    q <- LN2(q + FFN(q)); query_key_padding_mask goes to the self-, key_padding_mask to the
    cross-attention."""
    torch.manual_seed(0)
    attn_cfgs = [dict(type='MultiheadAttention', embed_dims=C, num_heads=4, dropout=0.0),
                 msda_cfg()]
    layer = DetrTransformerDecoderLayer(**layer_cfg(DECODER, batch_first, attn_cfgs))
    randomise(layer, seed=9)
    layer.eval()
    q = seq(randn(B, Q, C, seed=1), batch_first)
    pos = seq(randn(B, Q, C, seed=2), batch_first)
    memory = seq(randn(B, N_V, C, seed=3), batch_first)
    kw = msda_kwargs(Q, ref_dim, seed=4)
    query_padding = torch.zeros(B, Q, dtype=torch.bool)
    query_padding[0, -1] = True
    key_padding = torch.zeros(B, N_V, dtype=torch.bool)
    key_padding[1, 15:20] = True
    out = layer(q, None, memory, query_pos=pos, query_key_padding_mask=query_padding,
                key_padding_mask=key_padding, **kw)

    zeros = torch.zeros_like(q)
    self_attn, cross_attn = layer.attentions
    t = layer.norms[0](q + self_attn(q, q, q, zeros, query_pos=pos, key_pos=pos,
                                     key_padding_mask=query_padding))
    t = layer.norms[1](t + cross_attn(t, None, memory, zeros, query_pos=pos,
                                      key_padding_mask=key_padding, **kw))
    assert_close(out, layer.norms[2](ffn_residual(layer.ffns[0], t)))


# ---------- checkpoint keys (docs/co_detr.md, "Checkpoint names, shapes and counts")


def co_detr_encoder(**kwargs):
    layer = dict(type='BaseTransformerLayer',
                 attn_cfgs=dict(type='MultiScaleDeformableAttention', embed_dims=256,
                                dropout=0.0),
                 feedforward_channels=2048, ffn_dropout=0.0, operation_order=POST_NORM)
    return DetrTransformerEncoder(transformerlayers=layer, num_layers=6, **kwargs)


ENCODER_LAYER_KEYS = {
    'attentions.0.sampling_offsets.weight': (256, 256),
    'attentions.0.sampling_offsets.bias': (256,),
    'attentions.0.attention_weights.weight': (128, 256),
    'attentions.0.attention_weights.bias': (128,),
    'attentions.0.value_proj.weight': (256, 256),
    'attentions.0.value_proj.bias': (256,),
    'attentions.0.output_proj.weight': (256, 256),
    'attentions.0.output_proj.bias': (256,),
    'ffns.0.layers.0.0.weight': (2048, 256),
    'ffns.0.layers.0.0.bias': (2048,),
    'ffns.0.layers.1.weight': (256, 2048),
    'ffns.0.layers.1.bias': (256,),
    'norms.0.weight': (256,), 'norms.0.bias': (256,),
    'norms.1.weight': (256,), 'norms.1.bias': (256,),
}


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_co_detr_encoder_state_dict_keys():
    encoder = co_detr_encoder()
    expected = {f'layers.{i}.{k}': v for i in range(6) for k, v in ENCODER_LAYER_KEYS.items()}
    assert len(ENCODER_LAYER_KEYS) == 16
    assert shapes(encoder) == expected  # 96 entries, no post_norm
    assert len(expected) == 96 and encoder.post_norm is None


def test_co_detr_decoder_layer_state_dict_keys():
    layer = DetrTransformerDecoderLayer(
        attn_cfgs=[dict(type='MultiheadAttention', embed_dims=256, num_heads=8, dropout=0.0),
                   dict(type='MultiScaleDeformableAttention', embed_dims=256, dropout=0.0)],
        feedforward_channels=2048, ffn_dropout=0.0, operation_order=DECODER)
    expected = {
        'attentions.0.attn.in_proj_weight': (768, 256), 'attentions.0.attn.in_proj_bias': (768,),
        'attentions.0.attn.out_proj.weight': (256, 256), 'attentions.0.attn.out_proj.bias': (256,),
        **{k.replace('attentions.0.', 'attentions.1.'): v for k, v in ENCODER_LAYER_KEYS.items()
           if k.startswith('attentions.')},
        **{k: v for k, v in ENCODER_LAYER_KEYS.items() if not k.startswith('attentions.')},
        'norms.2.weight': (256,), 'norms.2.bias': (256,),
    }
    assert shapes(layer) == expected
    assert len(expected) == 22


# -------------------------------------------------------------------------- errors, registry


@pytest.mark.parametrize('build,match', [
    (lambda: BaseTransformerLayer(**layer_cfg(('self_attn', 'norm', 'fnn', 'norm'), False)),
     r"operation_order.*'fnn'"),
    (lambda: BaseTransformerLayer(**layer_cfg(None, False)), 'operation_order'),
    (lambda: BaseTransformerLayer(**layer_cfg(DECODER, False, [DECODER_ATTNS[0]])),
     'attn_cfgs has 1 configs for 2 operations'),
    (lambda: BaseTransformerLayer(norm_cfg=dict(type='BN'), **layer_cfg(POST_NORM, False)),
     "norm_cfg=dict\\(type='LN'\\)"),
    (lambda: DetrTransformerDecoderLayer(**layer_cfg(POST_NORM, False, DECODER_ATTNS[:1])),
     'DetrTransformerDecoderLayer: operation_order must hold self_attn, cross_attn'),
    (lambda: DetrTransformerDecoderLayer(**layer_cfg(
        ('self_attn', 'norm', 'self_attn', 'norm', 'ffn', 'norm'), False, DECODER_ATTNS)),
     'DetrTransformerDecoderLayer: operation_order'),
    (lambda: DetrTransformerEncoder(dict(type='BaseTransformerLayer', **layer_cfg(
        POST_NORM, False)), num_layers=1, post_norm_cfg=dict(type='BN')), 'post_norm_cfg'),
    (lambda: FFN(num_fcs=1), 'num_fcs must be >= 2'),
    (lambda: FFN(act_cfg=dict(type='SiLU')), 'act_cfg'),
    (lambda: MultiheadAttention(C, 4, dropout_layer=dict(type='DropPath', drop_prob=0.1)),
     "dropout_layer: only type='Dropout'"),
])
def test_bad_configs_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_registry_builds_our_classes():
    """mmcv registers FFN, MultiheadAttention and BaseTransformerLayer in mmengine's root
    registry (imported above); rcnn_det's MODELS must still resolve every name to ours."""
    attn = dict(type='MultiheadAttention', embed_dims=C, num_heads=4)
    cfgs = {
        FFN: dict(type='FFN', embed_dims=C, feedforward_channels=24),
        MultiheadAttention: attn,
        BaseTransformerLayer: dict(type='BaseTransformerLayer', **layer_cfg(POST_NORM, True)),
        DetrTransformerDecoderLayer: dict(type='DetrTransformerDecoderLayer',
                                          **layer_cfg(DECODER, True, [attn, attn])),
        DetrTransformerEncoder: dict(type='DetrTransformerEncoder', num_layers=2,
                                     transformerlayers=dict(type='BaseTransformerLayer',
                                                            **layer_cfg(POST_NORM, True))),
    }
    for cls, cfg in cfgs.items():
        module = MODELS.build(cfg)
        assert type(module) is cls
    assert type(module.layers[1].ffns[0]) is FFN


# ------------------------------------------------ defaults that follow mmcv / mmdet 2.x


def test_ffn_embed_dims_default_to_the_attention():
    ref = mmcv_quiet(mmcv_bricks.BaseTransformerLayer,
                     **dict(layer_cfg(POST_NORM, True), ffn_cfgs=dict(type='FFN')))
    ours = BaseTransformerLayer(**dict(layer_cfg(POST_NORM, True), ffn_cfgs=dict(type='FFN')))
    load_from_mmcv(ref, ours)  # same widths: the FFN took the attention's embed_dims
    with pytest.raises(ValueError, match='embed_dims'):
        BaseTransformerLayer(**dict(layer_cfg(POST_NORM, True),
                                    ffn_cfgs=dict(type='FFN', embed_dims=8)))


def test_post_norm_follows_mmdet2():
    """mmdet 2.x: post_norm_cfg defaults to LN and is built only after pre-norm layers."""
    assert co_detr_encoder(post_norm_cfg=dict(type='LN')).post_norm is None
    pre_norm = dict(type='BaseTransformerLayer', **layer_cfg(PRE_NORM, False))
    assert DetrTransformerEncoder(pre_norm, num_layers=1).post_norm is not None
    with pytest.raises(ValueError, match='pre-norm'):
        DetrTransformerEncoder(pre_norm, num_layers=1, post_norm_cfg=None)
