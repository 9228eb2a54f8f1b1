"""Deformable DETR's transformer (mmdet 2.x ``DeformableDetrTransformer`` /
``DeformableDetrTransformerDecoder``, Co-DETR's ``look_forward_twice``), batch-first.

Every number is compared with a reference written independently: Python loops over pixels,
coordinates and frequencies, or a hand-run of the sub-modules in the documented order
(docs/co_detr.md, "Transformer order of operations"). The state dict of the Co-DETR-sized
transformer is checked against the official checkpoint names (same file, "Checkpoint names,
shapes and counts"), and ``init_weights`` against mmdet 2.x's.

Shape letters: B = 2 images, Q queries, N tokens over L = 2 levels, C = 16 (tiny) channels.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from rcnn_det.models.layers import (DeformableDetrTransformer, DeformableDetrTransformerDecoder,
                                    MultiScaleDeformableAttention, encoder_reference_points,
                                    inverse_sigmoid, proposal_pos_embed, valid_ratios)
from rcnn_det.registry import MODELS

B, C, Q = 2, 16, 5
SHAPES = [(4, 6), (2, 3)]  # (H_l, W_l), finest first
N = sum(h * w for h, w in SHAPES)
POST_NORM = ('self_attn', 'norm', 'ffn', 'norm')
DECODER = ('self_attn', 'norm', 'cross_attn', 'norm', 'ffn', 'norm')
ATOL = 1e-5


@pytest.fixture(scope='module', autouse=True)
def single_thread():
    """Tiny tensors: intra-op threads only add synchronisation. Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def randomise(module: nn.Module, seed: int, scale: float = 0.3) -> None:
    """Non-trivial values everywhere (zero-initialised offsets and LayerNorm affine included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def assert_close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-5)


def logit(x: torch.Tensor) -> torch.Tensor:
    """Plain log(x / (1 - x)); the references used here stay well inside (0, 1)."""
    return torch.log(x / (1 - x))


# ------------------------------------------------------------------------- configs


def msda_cfg(embed_dims=C, num_heads=2, num_levels=2, num_points=2):
    return dict(type='MultiScaleDeformableAttention', embed_dims=embed_dims, num_heads=num_heads,
                num_levels=num_levels, num_points=num_points, dropout=0.0)


def encoder_cfg(num_layers=2, embed_dims=C, ffn=32, **msda):
    return dict(type='DetrTransformerEncoder', num_layers=num_layers,
                transformerlayers=dict(type='BaseTransformerLayer',
                                       attn_cfgs=msda_cfg(embed_dims, **msda),
                                       feedforward_channels=ffn, ffn_dropout=0.0,
                                       operation_order=POST_NORM))


def decoder_cfg(num_layers=3, embed_dims=C, ffn=32, heads=2, return_intermediate=True, **extra):
    msda = (dict(num_heads=heads) if embed_dims == C
            else dict(num_heads=heads, num_levels=4, num_points=4))
    return dict(type='DeformableDetrTransformerDecoder', num_layers=num_layers,
                return_intermediate=return_intermediate,
                transformerlayers=dict(
                    type='DetrTransformerDecoderLayer',
                    attn_cfgs=[dict(type='MultiheadAttention', embed_dims=embed_dims,
                                    num_heads=heads, dropout=0.0),
                               msda_cfg(embed_dims, **msda)],
                    feedforward_channels=ffn, ffn_dropout=0.0, operation_order=DECODER),
                **extra)


def build_decoder(seed=0, **kwargs) -> DeformableDetrTransformerDecoder:
    torch.manual_seed(seed)
    decoder = MODELS.build(decoder_cfg(**kwargs))
    randomise(decoder, seed=seed + 100)
    return decoder.eval()


def linear_branches(count: int, out: int, seed: int) -> nn.ModuleList:
    branches = nn.ModuleList(nn.Linear(C, out) for _ in range(count))
    randomise(branches, seed=seed, scale=0.5)
    return branches


def build_transformer(as_two_stage: bool, seed=0, look_forward_twice=False,
                      **kwargs) -> DeformableDetrTransformer:
    torch.manual_seed(seed)
    cfg = dict(type='DeformableDetrTransformer', encoder=encoder_cfg(),
               decoder=decoder_cfg(num_layers=2, look_forward_twice=look_forward_twice),
               as_two_stage=as_two_stage, num_feature_levels=2, **kwargs)
    transformer = MODELS.build(cfg)
    transformer.init_weights()
    randomise(transformer, seed=seed + 200)
    return transformer.eval()


def level_masks() -> list[torch.Tensor]:
    """Image 0 unpadded; image 1 padded bottom/right: valid 3 x 4 of 4 x 6, then 2 x 2 of 2 x 3."""
    masks = [torch.zeros(B, h, w, dtype=torch.bool) for h, w in SHAPES]
    masks[0][1, 3:, :] = True
    masks[0][1, :, 4:] = True
    masks[1][1, :, 2:] = True
    return masks


def transformer_inputs(seed=0):
    feats = [randn(B, C, h, w, seed=seed + l) for l, (h, w) in enumerate(SHAPES)]
    pos = [randn(B, C, h, w, seed=seed + 10 + l) for l, (h, w) in enumerate(SHAPES)]
    return feats, level_masks(), pos


# ------------------------------------------------------------ independent references


def loop_valid_ratios(mask: torch.Tensor) -> torch.Tensor:
    """(w, h): the unpadded count of the first row / first column over the map's size."""
    _, height, width = mask.shape
    rows = []
    for m in mask:
        valid_w = sum(1 for j in range(width) if not m[0, j])
        valid_h = sum(1 for i in range(height) if not m[i, 0])
        rows.append([valid_w / width, valid_h / height])
    return torch.tensor(rows, dtype=torch.float32)


def loop_encoder_reference_points(shapes, ratios: torch.Tensor) -> torch.Tensor:
    """(B, N, L, 2): pixel centre over (valid ratio x size) of its own level, times each level's
    ratio."""
    num_images, num_levels = ratios.shape[:2]
    r = ratios.double().tolist()
    out = []
    for b in range(num_images):
        tokens = []
        for l, (height, width) in enumerate(shapes):
            for i in range(height):
                for j in range(width):
                    x = (j + 0.5) / (r[b][l][0] * width)
                    y = (i + 0.5) / (r[b][l][1] * height)
                    tokens.append([[x * r[b][t][0], y * r[b][t][1]] for t in range(num_levels)])
        out.append(tokens)
    return torch.tensor(out, dtype=torch.float64).float()


def loop_proposal_pos_embed(proposals: torch.Tensor, num_feats: int,
                            temperature: float = 10000.) -> torch.Tensor:
    """(B, Q, 4) unactivated -> (B, Q, 4 F): for coordinate c and frequency k, at c * F + k,
    sin (even k) or cos (odd k) of sigmoid(p_c) * 2 pi / temperature^(2 (k // 2) / F)."""
    p = proposals.double().sigmoid()
    out = torch.zeros(*proposals.shape[:2], 4 * num_feats, dtype=torch.float64)
    for c in range(4):
        for k in range(num_feats):
            angle = p[..., c] * 2 * math.pi / temperature ** (2 * (k // 2) / num_feats)
            out[..., c * num_feats + k] = angle.sin() if k % 2 == 0 else angle.cos()
    return out.float()


def loop_proposals(padding: torch.Tensor, shapes) -> tuple[torch.Tensor, torch.Tensor]:
    """Logit-space (cx, cy, w, h) per token, +inf where padded or outside (0.01, 0.99), and the
    (B, N) mask of the tokens that keep their memory."""
    num_images = padding.shape[0]
    out, keep = [], []
    for b in range(num_images):
        start, boxes, kept = 0, [], []
        for l, (height, width) in enumerate(shapes):
            pad = padding[b, start:start + height * width].view(height, width).tolist()
            valid_w = sum(1 for j in range(width) if not pad[0][j])
            valid_h = sum(1 for i in range(height) if not pad[i][0])
            for y in range(height):
                for x in range(width):
                    size = 0.05 * 2 ** l
                    box = [(x + 0.5) / valid_w if valid_w else math.inf,
                           (y + 0.5) / valid_h if valid_h else math.inf, size, size]
                    usable = all(0.01 < v < 0.99 for v in box)
                    if pad[y][x] or not usable:
                        boxes.append([math.inf] * 4)
                        kept.append(False)
                    else:
                        boxes.append([math.log(v / (1 - v)) for v in box])
                        kept.append(True)
            start += height * width
        out.append(boxes)
        keep.append(kept)
    return torch.tensor(out, dtype=torch.float64).float(), torch.tensor(keep)


def flatten_by_hand(transformer, feats, masks, pos):
    tokens, padding, positions = [], [], []
    for l, (feat, mask, p) in enumerate(zip(feats, masks, pos)):
        _, _, height, width = feat.shape
        for i in range(height):
            for j in range(width):
                tokens.append(feat[:, :, i, j])
                padding.append(mask[:, i, j])
                positions.append(p[:, :, i, j] + transformer.level_embeds[l])
    return torch.stack(tokens, 1), torch.stack(padding, 1), torch.stack(positions, 1)


def level_tensors(shapes):
    spatial = torch.tensor(shapes, dtype=torch.long)
    sizes = [h * w for h, w in shapes]
    starts = torch.tensor([sum(sizes[:l]) for l in range(len(shapes))], dtype=torch.long)
    return spatial, starts


# ----------------------------------------------------------------------- inverse_sigmoid


def f32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32))


@pytest.mark.parametrize('x,expected', [
    (0.5, 0.0),
    (0.25, math.log(1 / 3)),
    (0.9, math.log(0.9 / 0.1)),
    (2e-5, math.log(f32(2e-5) / (1 - f32(2e-5)))),           # not clamped
    (0.0, math.log(1e-5)),                                  # numerator clamped to eps
    (1.0, -math.log(1e-5)),                                 # denominator clamped to eps
    (-0.7, math.log(1e-5)),                                 # < 0: clamped to 0 first
    (1.8, -math.log(1e-5)),                                 # > 1: clamped to 1 first
    (4e-6, math.log(1e-5 / (1 - f32(4e-6)))),               # only the numerator clamped
    (1 - 4e-6, math.log(f32(1 - 4e-6) / 1e-5)),             # only the denominator clamped
])
def test_inverse_sigmoid_hand_values(x, expected):
    out = inverse_sigmoid(torch.tensor([x]))
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_inverse_sigmoid_eps_argument_and_round_trip():
    assert inverse_sigmoid(torch.tensor([0.05]), eps=0.1).item() == pytest.approx(
        math.log(0.1 / 0.95), rel=1e-6)
    assert inverse_sigmoid(torch.tensor([0.97]), eps=0.1).item() == pytest.approx(
        math.log(0.97 / 0.1), rel=1e-6)
    # both sides clamped at the same eps: symmetric and finite at the ends
    ends = inverse_sigmoid(torch.tensor([0.0, 1.0]))
    assert ends[0].item() == pytest.approx(-ends[1].item())
    assert torch.isfinite(ends).all()
    x = torch.linspace(1e-5, 1 - 1e-5, 1001, dtype=torch.float64)
    assert_close(inverse_sigmoid(x).sigmoid(), x, atol=1e-9)
    x32 = torch.linspace(1e-3, 1 - 1e-3, 1001)
    assert_close(inverse_sigmoid(x32).sigmoid(), x32, atol=1e-6)


# -------------------------------------------------------------------------- valid_ratios


def test_valid_ratios_hand_mask():
    mask = torch.zeros(2, 4, 6, dtype=torch.bool)
    mask[1, 3:, :] = True   # image 1: bottom row padded  -> valid h = 3 of 4
    mask[1, :, 4:] = True   # and two right columns       -> valid w = 4 of 6
    ratios = valid_ratios(mask)
    assert ratios.dtype == torch.float32 and ratios.shape == (2, 2)
    assert_close(ratios, torch.tensor([[1.0, 1.0], [4 / 6, 3 / 4]]))  # (w, h)
    # only the first row (w) and the first column (h) count, not the rest of the map
    mask[1, 1, 3] = True    # a hole inside the first row's extent
    mask[1, 1, 4] = False   # a valid pixel right of the first row's extent
    mask[1, 2, 0] = True    # the first column ends after row 1 ...
    mask[1, 2, 1] = False   # ... while column 1 goes on to row 2
    assert_close(valid_ratios(mask), torch.tensor([[1.0, 1.0], [4 / 6, 2 / 4]]))
    assert_close(valid_ratios(mask), loop_valid_ratios(mask))


# --------------------------------------------------------------- encoder_reference_points


def test_encoder_reference_points_against_loop():
    ratios = torch.tensor([[[1.0, 1.0], [1.0, 1.0]],
                           [[4 / 6, 3 / 4], [2 / 3, 1 / 2]]])  # (B, L, (w, h))
    points = encoder_reference_points(SHAPES, ratios)
    assert points.shape == (B, N, len(SHAPES), 2)
    assert_close(points, loop_encoder_reference_points(SHAPES, ratios))
    # unpadded image: the pixel centres, the same on every level
    assert_close(points[0, 7, 0], torch.tensor([1.5 / 6, 1.5 / 4]))
    assert_close(points[0, 24 + 4], torch.tensor([[1.5 / 3, 1.5 / 2]] * 2))


# --------------------------------------------------------------------- proposal_pos_embed


@pytest.mark.parametrize('num_feats,temperature', [(6, 10000), (8, 20), (128, 10000)])
def test_proposal_pos_embed_against_loop(num_feats, temperature):
    proposals = randn(2, 3, 4, seed=3) * 2
    proposals[0, 0] = torch.tensor([0.3, -1.0, 2.0, -2.5])
    out = proposal_pos_embed(proposals, num_feats, temperature)
    assert out.shape == (2, 3, 4 * num_feats)
    assert_close(out, loop_proposal_pos_embed(proposals, num_feats, temperature))


def test_proposal_pos_embed_defaults_and_infinite_proposals():
    proposals = torch.tensor([[[0.0, math.inf, -math.inf, 1.0]]])
    out = proposal_pos_embed(proposals)  # 128 features, temperature 10000
    assert out.shape == (1, 1, 512)
    assert_close(out, loop_proposal_pos_embed(proposals, 128))
    # cy = +inf -> sigmoid 1 -> angle 2 pi: sin 0, cos 1 at k = 0, 1
    assert out[0, 0, 128].item() == pytest.approx(0.0, abs=1e-6)
    assert out[0, 0, 129].item() == pytest.approx(1.0, abs=1e-6)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------- encoder_proposals

# Level 1 is 60 wide: its first and last columns have cx outside (0.01, 0.99); level 5 has
# w = h = 0.05 * 32 = 1.6, invalid everywhere. Image 1 adds padding, an interior hole (padding
# with an in-range box) and an unpadded pixel right of the first row's valid extent (cx > 1).
PROPOSAL_SHAPES = [(3, 5), (1, 60), (1, 1), (1, 1), (1, 1), (1, 1)]


def proposal_padding() -> torch.Tensor:
    levels = [torch.zeros(B, h, w, dtype=torch.bool) for h, w in PROPOSAL_SHAPES]
    levels[0][1] = torch.tensor([[0, 0, 0, 1, 1],
                                 [0, 0, 1, 0, 1],
                                 [1, 1, 1, 1, 1]], dtype=torch.bool)
    levels[1][1, :, 40:] = True
    return torch.cat([m.flatten(1) for m in levels], 1)


def test_encoder_proposals_against_loop():
    transformer = build_transformer(as_two_stage=True)
    padding = proposal_padding()
    num_tokens = padding.shape[1]
    memory = randn(B, num_tokens, C, seed=5)
    out_memory, proposals = transformer.encoder_proposals(memory, padding, PROPOSAL_SHAPES)
    expected, keep = loop_proposals(padding, PROPOSAL_SHAPES)
    assert proposals.shape == (B, num_tokens, 4) and out_memory.shape == (B, num_tokens, C)
    # the cases the layout is meant to produce
    assert not keep[0, 15] and not keep[0, 15 + 59] and keep[0, 16]      # cx < 0.01 / > 0.99
    assert keep[1, 15] and keep[1, 15 + 39] and not keep[1, 15 + 40]     # valid_W = 40
    assert not keep[:, -1].any() and keep[:, -2].all()                    # w = 1.6 / 0.8
    assert not keep[1, 7] and not keep[1, 8]                              # hole / cx > 1
    assert not padding[1, 8]
    inf = torch.isinf(proposals)
    assert (inf == ~keep[..., None]).all()                                # all 4 coordinates
    assert (proposals[inf] == math.inf).all()                             # +inf, not -inf
    assert_close(proposals[~inf], expected[~inf])
    # memory: zeroed where not kept, then enc_output and enc_output_norm
    zeroed = torch.where(keep[..., None], memory, torch.zeros(()))
    assert_close(out_memory,
                 transformer.enc_output_norm(transformer.enc_output(zeroed)))
    # and not merely "unchanged where kept"
    assert (out_memory - transformer.enc_output_norm(transformer.enc_output(memory))
            ).abs().amax(-1)[~keep].min() > 1e-3


# -------------------------------------------------------------------------------- decoder


def decoder_inputs(ref_dim: int, seed=0):
    spatial, starts = level_tensors(SHAPES)
    padding = torch.cat([m.flatten(1) for m in level_masks()], 1)
    ratios = torch.stack([loop_valid_ratios(m) for m in level_masks()], 1)
    g = torch.Generator().manual_seed(seed)
    reference = torch.rand(B, Q, ref_dim, generator=g) * 0.8 + 0.1
    return dict(query=randn(B, Q, C, seed=seed + 1), value=randn(B, N, C, seed=seed + 2),
                reference=reference, valid_ratios=ratios,
                layer_kwargs=dict(query_pos=randn(B, Q, C, seed=seed + 3),
                                  key_padding_mask=padding, spatial_shapes=spatial,
                                  level_start_index=starts))


def hand_decoder(decoder, inputs, reg_branches):
    """Layer k gets ref[:, :, None] * (ratios or cat(ratios, ratios))[:, None]; with branches,
    new = sigmoid(reg(q) + logit(ref)) (4-d) or cat(sigmoid(reg[:2] + logit(ref)),
    sigmoid(reg[2:])) (2-d); the next layer starts from new (values only)."""
    query, ref, ratios = inputs['query'], inputs['reference'], inputs['valid_ratios']
    layer_refs, queries, new_refs = [], [], []
    for k, layer in enumerate(decoder.layers):
        scale = torch.cat([ratios, ratios], -1) if ref.shape[-1] == 4 else ratios
        ref_in = ref[:, :, None] * scale[:, None]
        layer_refs.append(ref_in)
        query = layer(query, None, inputs['value'], reference_points=ref_in,
                      **inputs['layer_kwargs'])
        queries.append(query)
        if reg_branches is not None:
            delta = reg_branches[k](query)
            if ref.shape[-1] == 4:
                ref = (delta + logit(ref)).sigmoid()
            else:
                ref = torch.cat([(delta[..., :2] + logit(ref)).sigmoid(),
                                 delta[..., 2:].sigmoid()], -1)
        new_refs.append(ref)
    return layer_refs, queries, new_refs


def record_reference_inputs(monkeypatch, decoder) -> list[torch.Tensor]:
    seen = []
    for layer in decoder.layers:
        def forward(*args, _original=layer.forward, **kwargs):
            seen.append(kwargs['reference_points'])
            return _original(*args, **kwargs)
        monkeypatch.setattr(layer, 'forward', forward)
    return seen


def run_decoder(decoder, inputs, reg_branches, reference=None):
    return decoder(inputs['query'], None, inputs['value'],
                   reference_points=inputs['reference'] if reference is None else reference,
                   valid_ratios=inputs['valid_ratios'], reg_branches=reg_branches,
                   **inputs['layer_kwargs'])


@pytest.mark.parametrize('ref_dim', [4, 2])
@pytest.mark.parametrize('look_forward_twice', [False, True])
def test_decoder_matches_hand_run(monkeypatch, ref_dim, look_forward_twice):
    decoder = build_decoder(look_forward_twice=look_forward_twice)
    reg = linear_branches(3, 4, seed=7)
    inputs = decoder_inputs(ref_dim)
    with torch.no_grad():
        layer_refs, queries, new_refs = hand_decoder(decoder, inputs, reg)
    seen = record_reference_inputs(monkeypatch, decoder)
    with torch.no_grad():
        out_queries, out_refs = run_decoder(decoder, inputs, reg)
    # (a) the scaled references each layer receives (2-d refs become 4-d after the first
    # refinement, as in mmdet 2.x)
    assert [tuple(r.shape) for r in seen] == [(B, Q, 2, ref_dim), (B, Q, 2, 4), (B, Q, 2, 4)]
    for got, expected in zip(seen, layer_refs):
        assert_close(got, expected)
    # (b) queries and refined references
    assert out_queries.shape == (3, B, Q, C) and out_refs.shape == (3, B, Q, 4)
    assert_close(out_queries, torch.stack(queries))
    assert_close(out_refs, torch.stack(new_refs))
    # image 1's valid ratios are not 1: the scaling is visible
    assert (seen[1][1] - new_refs[0][1][:, None]).abs().max() > 1e-2


def test_decoder_detaches_the_next_layers_reference(monkeypatch):
    decoder = build_decoder()
    reg = linear_branches(3, 4, seed=7)
    inputs = decoder_inputs(4)
    reference = inputs['reference'].clone().requires_grad_()  # one-stage: a learned reference
    seen = record_reference_inputs(monkeypatch, decoder)
    out_queries, out_refs = run_decoder(decoder, inputs, reg, reference)
    assert seen[0].requires_grad                     # the initial reference is not detached
    assert not seen[1].requires_grad and not seen[2].requires_grad
    assert out_queries.requires_grad
    # (c) no layer's query flows back into any reg_branches[k] (only through the detached
    # references could it), while the initial reference does reach layer 0 and thus later ones
    grads = torch.autograd.grad(out_queries.sum(), [*reg.parameters(), reference],
                                allow_unused=True)
    assert all(g is None for g in grads[:-1])
    assert grads[-1] is not None and grads[-1].abs().sum() > 0
    # (d) plain: the stored references are the detached ones
    assert not out_refs.requires_grad


def test_look_forward_twice_stores_the_non_detached_refinement():
    decoder = build_decoder(look_forward_twice=True)
    reg = linear_branches(3, 4, seed=7)
    inputs = decoder_inputs(4)
    _, out_refs = run_decoder(decoder, inputs, reg)
    assert out_refs.requires_grad
    for k in range(3):
        weights = [branch.weight for branch in reg]
        grads = torch.autograd.grad(out_refs[k].sum(), weights, allow_unused=True,
                                    retain_graph=True)
        # stored[k] trains reg_branches[k] and only it (its input reference is detached); the
        # others get None or, through the stack's backward, exact zeros
        assert grads[k] is not None and grads[k].abs().sum() > 0
        assert all(g is None or (g == 0).all() for j, g in enumerate(grads) if j != k)
    # same values as the plain decoder
    plain = build_decoder(look_forward_twice=False)
    plain.load_state_dict(decoder.state_dict())
    with torch.no_grad():
        assert_close(out_refs.detach(), run_decoder(plain, inputs, reg)[1])


@pytest.mark.parametrize('ref_dim', [4, 2])
def test_decoder_without_reg_branches_keeps_references(monkeypatch, ref_dim):
    decoder = build_decoder(look_forward_twice=True)
    inputs = decoder_inputs(ref_dim)
    with torch.no_grad():
        layer_refs, queries, _ = hand_decoder(decoder, inputs, None)
        seen = record_reference_inputs(monkeypatch, decoder)
        out_queries, out_refs = run_decoder(decoder, inputs, None)
    assert out_refs.shape == (3, B, Q, ref_dim)
    assert_close(out_refs, inputs['reference'].expand(3, -1, -1, -1))
    assert_close(out_queries, torch.stack(queries))
    for got, expected in zip(seen, layer_refs):
        assert_close(got, expected)
        assert_close(got, layer_refs[0])


@pytest.mark.parametrize('with_reg', [True, False])
def test_decoder_return_intermediate_false(with_reg):
    stacked = build_decoder(seed=3)
    last = build_decoder(seed=3, return_intermediate=False)
    last.load_state_dict(stacked.state_dict())
    reg = linear_branches(3, 4, seed=7) if with_reg else None
    inputs = decoder_inputs(4)
    with torch.no_grad():
        all_queries, all_refs = run_decoder(stacked, inputs, reg)
        query, ref = run_decoder(last, inputs, reg)
    assert query.shape == (B, Q, C) and ref.shape == (B, Q, 4)
    assert_close(query, all_queries[-1])
    assert_close(ref, all_refs[-1])


def test_decoder_rejects_post_norm():
    with pytest.raises(ValueError, match='post_norm_cfg'):
        MODELS.build(decoder_cfg(post_norm_cfg=dict(type='LN')))


# ---------------------------------------------------------------------------- transformer


def test_encode_flattens_levels_and_adds_each_levels_embedding(monkeypatch):
    transformer = build_transformer(as_two_stage=False)
    with torch.no_grad():
        transformer.level_embeds.copy_(torch.tensor([[1.0] * C, [-2.0] * C]))
    feats, masks, pos = transformer_inputs()
    expected = flatten_by_hand(transformer, feats, masks, pos)
    raw = transformer.encode(feats, masks, None)    # no positions: the tokens are the memory
    assert raw.shapes == SHAPES
    assert raw.memory.shape == (B, N, C) and raw.padding.dtype == torch.bool
    assert_close(raw.memory, expected[0])
    assert torch.equal(raw.padding, expected[1])
    for got, feat in zip(raw.maps(), feats):         # and back into maps
        assert torch.equal(got, feat)
    seen = {}

    def fake_encoder(tokens, query_pos, **kwargs):
        seen.update(tokens=tokens, positions=query_pos)
        return tokens
    monkeypatch.setattr(transformer.encoder, 'forward', fake_encoder)
    transformer.encode(feats, masks, pos)
    positions = seen['positions']
    assert_close(positions, expected[2])
    assert_close(positions[:, :24], pos[0].flatten(2).transpose(1, 2) + 1.0)
    assert_close(positions[:, 24:], pos[1].flatten(2).transpose(1, 2) - 2.0)


def hand_encoder(transformer, feats, masks, pos):
    tokens, padding, positions = flatten_by_hand(transformer, feats, masks, pos)
    ratios = torch.stack([loop_valid_ratios(m) for m in masks], 1)
    spatial, starts = level_tensors(SHAPES)
    memory = transformer.encoder(
        tokens, query_pos=positions, query_key_padding_mask=padding, spatial_shapes=spatial,
        level_start_index=starts, valid_ratios=ratios,
        reference_points=loop_encoder_reference_points(SHAPES, ratios))
    layer_kwargs = dict(key_padding_mask=padding, spatial_shapes=spatial,
                        level_start_index=starts)
    return memory, padding, ratios, layer_kwargs


def record_decoder_call(monkeypatch, transformer) -> dict:
    seen = {}
    original = transformer.decoder.forward

    def forward(query, key=None, value=None, **kwargs):
        seen.update(kwargs, query=query, value=value)
        return original(query, key, value, **kwargs)
    monkeypatch.setattr(transformer.decoder, 'forward', forward)
    return seen


def test_one_stage_transformer_matches_hand_run(monkeypatch):
    transformer = build_transformer(as_two_stage=False)
    reg = linear_branches(2, 4, seed=11)
    feats, masks, pos = transformer_inputs()
    query_embed = randn(Q, 2 * C, seed=20)
    seen = record_decoder_call(monkeypatch, transformer)
    with torch.no_grad():
        queries, init_ref, inter_refs, enc_class, enc_coord = transformer(
            feats, masks, query_embed, pos, reg_branches=reg)
        memory, padding, ratios, layer_kwargs = hand_encoder(transformer, feats, masks, pos)
        query_pos = query_embed[:, :C].expand(B, -1, -1)
        query = query_embed[:, C:].expand(B, -1, -1)
        reference = transformer.reference_points(query_pos).sigmoid()
        expected = transformer.decoder(query, None, memory, query_pos=query_pos,
                                       reference_points=reference, valid_ratios=ratios,
                                       reg_branches=reg, **layer_kwargs)
    assert queries.shape == (2, B, Q, C) and init_ref.shape == (B, Q, 2)
    assert inter_refs.shape == (2, B, Q, 4)
    assert enc_class is None and enc_coord is None
    assert_close(seen['query_pos'], query_pos)
    assert_close(seen['query'], query)
    assert_close(seen['value'], memory)
    assert torch.equal(seen['key_padding_mask'], padding)
    assert_close(seen['valid_ratios'], ratios)
    assert_close(init_ref, reference)
    assert_close(queries, expected[0])
    assert_close(inter_refs, expected[1])


def test_one_stage_without_reg_branches():
    transformer = build_transformer(as_two_stage=False)
    feats, masks, pos = transformer_inputs()
    with torch.no_grad():
        queries, init_ref, inter_refs, _, _ = transformer(feats, masks, randn(Q, 2 * C, seed=20),
                                                          pos)
    assert queries.shape == (2, B, Q, C) and inter_refs.shape == (2, B, Q, 2)
    assert_close(inter_refs, init_ref.expand(2, -1, -1, -1))


def two_stage_setup(padded_tokens_win: bool):
    """Class 1 = 200 - class 0 dominates every token, so the max over classes ranks the tokens in
    the reverse order of class 0. With ``padded_tokens_win``, class 0 is aligned with the
    (identical) processed memory of the padded tokens, which LayerNorm(affine = identity) makes
    the unique maximum."""
    transformer = build_transformer(as_two_stage=True, two_stage_num_proposals=Q,
                                    look_forward_twice=True)
    cls = linear_branches(3, 3, seed=12)
    reg = linear_branches(3, 4, seed=13)
    with torch.no_grad():
        if padded_tokens_win:
            nn.init.ones_(transformer.enc_output_norm.weight)
            nn.init.zeros_(transformer.enc_output_norm.bias)
            padded = transformer.enc_output_norm(transformer.enc_output(torch.zeros(C)))
            cls[2].weight[0] = 3 * padded
        cls[2].weight[1] = -cls[2].weight[0]
        cls[2].bias[1] = 200.0 - cls[2].bias[0]
    return transformer, cls, reg


@pytest.mark.parametrize('padded_tokens_win', [False, True])
def test_two_stage_transformer_matches_hand_run(monkeypatch, padded_tokens_win):
    transformer, cls, reg = two_stage_setup(padded_tokens_win)
    feats, masks, pos = transformer_inputs()
    seen = record_decoder_call(monkeypatch, transformer)
    with torch.no_grad():
        queries, init_ref, inter_refs, enc_class, enc_coord = transformer(
            feats, masks, None, pos, reg_branches=reg, cls_branches=cls)
        memory, padding, ratios, layer_kwargs = hand_encoder(transformer, feats, masks, pos)
        proposals, keep = loop_proposals(padding, SHAPES)
        zeroed = torch.where(keep[..., None], memory, torch.zeros(()))
        out_memory = transformer.enc_output_norm(transformer.enc_output(zeroed))
        expected_class = cls[2](out_memory)
        expected_coord = reg[2](out_memory) + proposals
    assert queries.shape == (2, B, Q, C) and init_ref.shape == (B, Q, 4)
    assert inter_refs.shape == (2, B, Q, 4)
    assert enc_class.shape == (B, N, 3) and enc_coord.shape == (B, N, 4)
    assert_close(enc_class, expected_class)  # padded tokens' scores are not masked
    assert torch.isfinite(enc_class).all()
    inf = torch.isinf(enc_coord)
    assert (inf == padding[..., None]).all() and (enc_coord[inf] > 0).all()
    assert_close(enc_coord[~inf], expected_coord[~inf])

    # top-k by the class-0 logit (order included), not by the max over classes
    top = enc_class[..., 0].argsort(1, descending=True)[:, :Q]
    by_max = enc_class.max(-1).values.argsort(1, descending=True)[:, :Q]
    assert set(top[0].tolist()) != set(by_max[0].tolist())
    top_unact = enc_coord.gather(1, top[..., None].expand(-1, -1, 4))
    assert_close(init_ref, top_unact.sigmoid())
    assert_close(seen['reference_points'], top_unact.sigmoid())
    if padded_tokens_win:  # image 1's best tokens are padding: +inf boxes -> exactly 1
        assert padding[1].gather(0, top[1]).all()
        assert (init_ref[1] == 1.0).all()
        assert not padding[0].any()
    embed = transformer.pos_trans_norm(transformer.pos_trans(
        loop_proposal_pos_embed(top_unact, C // 2)))
    assert_close(seen['query_pos'], embed[..., :C])
    assert_close(seen['query'], embed[..., C:])
    assert_close(seen['value'], memory)
    assert torch.equal(seen['key_padding_mask'], padding)
    with torch.no_grad():
        expected = transformer.decoder(embed[..., C:], None, memory, query_pos=embed[..., :C],
                                       reference_points=top_unact.sigmoid(),
                                       valid_ratios=ratios, reg_branches=reg, **layer_kwargs)
    assert_close(queries, expected[0])
    assert_close(inter_refs, expected[1])


def test_two_stage_top_k_boxes_are_detached():
    transformer, cls, reg = two_stage_setup(padded_tokens_win=False)
    feats, masks, pos = transformer_inputs()
    queries, init_ref, inter_refs, enc_class, enc_coord = transformer(
        feats, masks, None, pos, reg_branches=reg, cls_branches=cls)
    assert not init_ref.requires_grad
    assert inter_refs.requires_grad  # look_forward_twice: the decoder's refinements do
    encoder_branch = list(reg[2].parameters())
    grads = torch.autograd.grad(queries.sum() + inter_refs.sum(), encoder_branch,
                                allow_unused=True, retain_graph=True)
    assert all(g is None for g in grads)
    # the encoder branch is trained by the encoder outputs only
    finite = torch.isfinite(enc_coord)
    grads = torch.autograd.grad(enc_coord[finite].sum(), encoder_branch)
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize('as_two_stage', [False, True])
def test_padded_content_and_other_images_do_not_matter(as_two_stage):
    """Image 1's outputs ignore what lies in its padding; image 0's ignore image 1."""
    if as_two_stage:
        transformer, cls, reg = two_stage_setup(padded_tokens_win=False)
        query_embed = None
    else:
        transformer = build_transformer(as_two_stage=False)
        cls, reg = None, linear_branches(2, 4, seed=11)
        query_embed = randn(Q, 2 * C, seed=20)
    feats, masks, pos = transformer_inputs()

    def run(f, m, p):
        with torch.no_grad():
            return transformer(f, m, query_embed, p, reg_branches=reg, cls_branches=cls)

    base = run(feats, masks, pos)
    noisy_feats = [f + 5 * randn(*f.shape, seed=30 + l) * m[:, None] for l, (f, m) in
                   enumerate(zip(feats, masks))]
    noisy_pos = [p - 3 * randn(*p.shape, seed=40 + l) * m[:, None] for l, (p, m) in
                 enumerate(zip(pos, masks))]
    assert any((a - b).abs().max() > 1 for a, b in zip(noisy_feats, feats))
    noisy = run(noisy_feats, masks, noisy_pos)
    for a, b in zip(base[:3], noisy[:3]):
        assert_close(a, b)
    if as_two_stage:
        assert_close(base[3], noisy[3])
        assert torch.equal(torch.isinf(base[4]), torch.isinf(noisy[4]))
    alone = run([f[:1] for f in feats], [m[:1] for m in masks], [p[:1] for p in pos])
    assert_close(alone[0], base[0][:, :1])
    assert_close(alone[1], base[1][:1])
    assert_close(alone[2], base[2][:, :1])


def test_two_stage_needs_cls_branches():
    transformer, _, reg = two_stage_setup(padded_tokens_win=False)
    feats, masks, pos = transformer_inputs()
    with pytest.raises(ValueError, match='cls_branches'):
        transformer(feats, masks, None, pos, reg_branches=reg)


# ------------------------------------------------- Co-DETR-sized state dict and init_weights


def co_detr_transformer(as_two_stage: bool) -> DeformableDetrTransformer:
    return MODELS.build(dict(
        type='DeformableDetrTransformer', as_two_stage=as_two_stage, num_feature_levels=4,
        encoder=encoder_cfg(num_layers=6, embed_dims=256, ffn=2048, num_heads=8, num_levels=4,
                            num_points=4),
        decoder=decoder_cfg(num_layers=6, embed_dims=256, ffn=2048, heads=8,
                            look_forward_twice=True)))


def msda_keys(prefix: str) -> dict:
    return {f'{prefix}.sampling_offsets.weight': (256, 256),
            f'{prefix}.sampling_offsets.bias': (256,),
            f'{prefix}.attention_weights.weight': (128, 256),
            f'{prefix}.attention_weights.bias': (128,),
            f'{prefix}.value_proj.weight': (256, 256), f'{prefix}.value_proj.bias': (256,),
            f'{prefix}.output_proj.weight': (256, 256), f'{prefix}.output_proj.bias': (256,)}


def ffn_and_norm_keys(prefix: str, num_norms: int) -> dict:
    keys = {f'{prefix}.ffns.0.layers.0.0.weight': (2048, 256),
            f'{prefix}.ffns.0.layers.0.0.bias': (2048,),
            f'{prefix}.ffns.0.layers.1.weight': (256, 2048),
            f'{prefix}.ffns.0.layers.1.bias': (256,)}
    for j in range(num_norms):
        keys[f'{prefix}.norms.{j}.weight'] = (256,)
        keys[f'{prefix}.norms.{j}.bias'] = (256,)
    return keys


def co_detr_expected_keys(as_two_stage: bool) -> dict:
    keys = {'level_embeds': (4, 256)}
    for i in range(6):
        keys.update(msda_keys(f'encoder.layers.{i}.attentions.0'))
        keys.update(ffn_and_norm_keys(f'encoder.layers.{i}', 2))
        mha = f'decoder.layers.{i}.attentions.0.attn'
        keys.update({f'{mha}.in_proj_weight': (768, 256), f'{mha}.in_proj_bias': (768,),
                     f'{mha}.out_proj.weight': (256, 256), f'{mha}.out_proj.bias': (256,)})
        keys.update(msda_keys(f'decoder.layers.{i}.attentions.1'))
        keys.update(ffn_and_norm_keys(f'decoder.layers.{i}', 3))
    if as_two_stage:
        keys.update({'enc_output.weight': (256, 256), 'enc_output.bias': (256,),
                     'enc_output_norm.weight': (256,), 'enc_output_norm.bias': (256,),
                     'pos_trans.weight': (512, 512), 'pos_trans.bias': (512,),
                     'pos_trans_norm.weight': (512,), 'pos_trans_norm.bias': (512,)})
    else:
        keys.update({'reference_points.weight': (2, 256), 'reference_points.bias': (2,)})
    return keys


@pytest.fixture(scope='module')
def co_detr_pair():
    torch.manual_seed(0)
    return {stage: co_detr_transformer(stage) for stage in (True, False)}


@pytest.mark.parametrize('as_two_stage', [True, False], ids=['two_stage', 'one_stage'])
def test_co_detr_sized_state_dict(co_detr_pair, as_two_stage):
    transformer = co_detr_pair[as_two_stage]
    got = {k: tuple(v.shape) for k, v in transformer.state_dict().items()}
    assert got == co_detr_expected_keys(as_two_stage)
    assert transformer.decoder.look_forward_twice and transformer.decoder.num_layers == 6


def ray_pattern(heads=8, levels=4, points=4) -> torch.Tensor:
    values = []
    for h in range(heads):
        theta = 2 * math.pi * h / heads
        cos, sin = math.cos(theta), math.sin(theta)
        top = max(abs(cos), abs(sin))
        for _ in range(levels):
            for p in range(points):
                values += [(p + 1) * cos / top, (p + 1) * sin / top]
    return torch.tensor(values)


@pytest.mark.parametrize('as_two_stage', [True, False], ids=['two_stage', 'one_stage'])
def test_co_detr_sized_init_weights(co_detr_pair, as_two_stage):
    transformer = co_detr_pair[as_two_stage]
    with torch.no_grad():
        for p in transformer.parameters():
            p.fill_(7.0)  # whatever init_weights leaves alone stays 7
    transformer.init_weights()
    msdas = [m for m in transformer.modules() if isinstance(m, MultiScaleDeformableAttention)]
    assert len(msdas) == 12
    for m in msdas:
        assert (m.sampling_offsets.weight == 0).all()  # re-initialised after the Xavier pass
        assert_close(m.sampling_offsets.bias.detach(), ray_pattern())
        assert (m.attention_weights.weight == 0).all() and (m.attention_weights.bias == 0).all()
        bound = math.sqrt(6 / 512)
        assert m.value_proj.weight.abs().max() <= bound and (m.value_proj.bias == 0).all()
    embeds = transformer.level_embeds.detach()
    assert 0.8 < embeds.std().item() < 1.2 and abs(embeds.mean().item()) < 0.15
    # every other matrix: Xavier-uniform
    for name, p in transformer.named_parameters():
        if p.dim() > 1 and 'sampling_offsets' not in name and 'attention_weights' not in name \
                and name != 'level_embeds':
            fan_out, fan_in = p.shape
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert p.abs().max() <= bound, name
            assert p.std() > bound / 3, name
    if as_two_stage:
        assert not hasattr(transformer, 'reference_points')
    else:
        assert (transformer.reference_points.bias == 0).all()
        weight = transformer.reference_points.weight
        assert weight.abs().max() <= math.sqrt(6 / 258)
