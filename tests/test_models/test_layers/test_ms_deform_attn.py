"""Multi-scale deformable attention: the vectorised function against a per-sample bilinear loop
(values and gradients, borders and outside points included), gradcheck, and the module's mmcv
semantics (checkpoint keys, init, layouts, padding, reference formulas, identity/query_pos)."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from rcnn_det.models.layers import (MultiScaleDeformableAttention, ms_deform_attn,
                                    multi_scale_deformable_attn_pytorch)
from rcnn_det.models.layers.ms_deform_attn import (deform_attn_sampling,
                                                   multi_scale_deformable_attn_gather)
from rcnn_det.registry import MODELS

SHAPES = [(5, 7), (3, 4), (1, 2)]  # (H_l, W_l)
NUM_VALUES = sum(h * w for h, w in SHAPES)
# Dyadic locations: loc * W - 0.5 and grid_sample's ((2 loc - 1) + 1) * W / 2 - 0.5 are both exact,
# so both sides floor to the same pixel and even the one-sided location gradients agree. They hit
# the map's outer edges (0, 1), pixel centres (0.5 for odd sizes, 0.125, ... for W = 4, 0.25 for
# W = 2), half-outside points and points whose four neighbours are all outside.
SPECIAL = [0.0, 1.0, 0.5, 0.125, 0.375, 0.25, 0.75, 0.875, -0.25, 1.25, -0.5, 1.5]


def loop_reference(value, spatial_shapes, locations, weights):
    """Per image, head, query, level and point: bilinear over the four neighbouring pixel centres
    at x = loc_x * W - 0.5, y = loc_y * H - 0.5; a neighbour outside the map reads zero."""
    B, _, M, D = value.shape
    _, Q, _, L, P, _ = locations.shape
    starts = [sum(h * w for h, w in spatial_shapes[:l]) for l in range(L)]
    images = []
    for b in range(B):
        queries = []
        for q in range(Q):
            heads = []
            for m in range(M):
                acc = value.new_zeros(D)
                for l, (h, w) in enumerate(spatial_shapes):
                    for p in range(P):
                        x = locations[b, q, m, l, p, 0] * w - 0.5
                        y = locations[b, q, m, l, p, 1] * h - 0.5
                        x0, y0 = math.floor(x.item()), math.floor(y.item())
                        fx, fy = x - x0, y - y0
                        sample = value.new_zeros(D)
                        corners = ((x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
                                   (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy))
                        for xi, yi, c in corners:
                            if 0 <= xi < w and 0 <= yi < h:
                                sample = sample + c * value[b, starts[l] + yi * w + xi, m]
                        acc = acc + weights[b, q, m, l, p] * sample
                heads.append(acc)
            queries.append(torch.cat(heads))
        images.append(torch.stack(queries))
    return torch.stack(images)


def random_inputs(B=2, Q=5, M=2, D=3, P=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = len(SHAPES)
    value = torch.randn(B, NUM_VALUES, M, D, generator=g, dtype=dtype)
    locations = torch.rand(B, Q, M, L, P, 2, generator=g, dtype=dtype) * 1.4 - 0.2
    flat = locations.view(-1, 2)
    for i in range(flat.shape[0] // 2):
        flat[i, 0] = SPECIAL[i % len(SPECIAL)]
        flat[i, 1] = SPECIAL[(5 * i + 1) % len(SPECIAL)]
    weights = torch.rand(B, Q, M, L, P, generator=g, dtype=dtype)
    return value, torch.tensor(SHAPES), locations, weights


# grid_sample per level, and four gathers per level (the graph TensorRT gets from export_onnx)
FUNCTIONS = [multi_scale_deformable_attn_pytorch, multi_scale_deformable_attn_gather]


@pytest.mark.parametrize('function', FUNCTIONS)
def test_function_matches_loop_reference_values(function):
    value, shapes, locations, weights = random_inputs(dtype=torch.float32)
    out = function(value, shapes, locations, weights)
    assert out.shape == (2, 5, 2 * 3)
    torch.testing.assert_close(out, loop_reference(value, SHAPES, locations, weights),
                               atol=1e-5, rtol=0)
    # A list of (H, W) pairs is accepted like the (L, 2) tensor.
    torch.testing.assert_close(function(value, SHAPES, locations, weights), out)


@pytest.mark.parametrize('function', FUNCTIONS)
def test_function_matches_loop_reference_gradients(function):
    inputs = random_inputs(seed=1)
    value, shapes, locations, weights = inputs
    grad_out = torch.randn(2, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads = []
    for fn, shp in ((function, shapes), (loop_reference, SHAPES)):
        leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
        out = fn(leaves[0], shp, leaves[1], leaves[2])
        grads.append(torch.autograd.grad((out * grad_out).sum(), leaves))
    for name, ours, ref in zip(('value', 'sampling_locations', 'attention_weights'), *grads):
        torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10, msg=f'd/d {name}')
    # x = -0.5 or 1.5 puts all four neighbours outside any map at least 2 wide: zero sample,
    # so exactly zero gradient for the location and its attention weight.
    far = (locations[..., 0] == -0.5) | (locations[..., 0] == 1.5)       # (B, Q, M, L, P)
    assert far.sum() >= 8
    assert not grads[0][1][far].any() and not grads[0][2][far].any()


def test_gradcheck_tiny():
    g = torch.Generator().manual_seed(3)
    shapes = torch.tensor([(2, 3), (1, 2)])
    value = torch.randn(1, 8, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    locations = (torch.rand(1, 2, 2, 2, 2, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1)
    weights = torch.rand(1, 2, 2, 2, 2, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda v, loc, w: multi_scale_deformable_attn_pytorch(v, shapes, loc, w),
        (value, locations.requires_grad_(), weights.requires_grad_()))


def test_function_rejects_inconsistent_shapes():
    value, shapes, locations, weights = random_inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match='N_v = 48 tokens'):
        multi_scale_deformable_attn_pytorch(value[:, :-1], shapes, locations, weights)
    with pytest.raises(ValueError, match='2 levels'):
        multi_scale_deformable_attn_pytorch(value[:, :47], shapes[:2], locations, weights)


# ---- the module ------------------------------------------------------------------------------

def test_default_state_dict_keys_and_shapes():
    module = MODELS.build(dict(type='MultiScaleDeformableAttention'))
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == {
        'sampling_offsets.weight': (256, 256), 'sampling_offsets.bias': (256,),
        'attention_weights.weight': (128, 256), 'attention_weights.bias': (128,),
        'value_proj.weight': (256, 256), 'value_proj.bias': (256,),
        'output_proj.weight': (256, 256), 'output_proj.bias': (256,)}
    assert isinstance(module.dropout, torch.nn.Dropout) and module.dropout.p == 0.1
    half = MultiScaleDeformableAttention(value_proj_ratio=0.5)
    assert half.value_proj.weight.shape == (128, 256)
    assert half.output_proj.weight.shape == (256, 128)


def test_init_weights():
    module = MultiScaleDeformableAttention()  # 8 heads, 4 levels, 4 points
    bias = module.sampling_offsets.bias.view(8, 4, 4, 2)                 # (M, L, P, xy)
    steps = torch.arange(1.0, 5.0)[None, :].expand(4, 4)               # point p -> p + 1
    torch.testing.assert_close(bias[0], torch.stack([steps, torch.zeros(4, 4)], -1))  # theta 0
    torch.testing.assert_close(bias[2], torch.stack([torch.zeros(4, 4), steps], -1),
                               atol=1e-6, rtol=0)                        # theta pi/2
    torch.testing.assert_close(bias[1], torch.stack([steps, steps], -1))  # pi/4, max |.| = 1
    torch.testing.assert_close(bias[5], torch.stack([-steps, -steps], -1))  # 5 pi/4
    assert not module.sampling_offsets.weight.any()
    assert not module.attention_weights.weight.any() and not module.attention_weights.bias.any()
    for proj in (module.value_proj, module.output_proj):
        assert not proj.bias.any()
        bound = math.sqrt(6 / (256 + 256))                               # Xavier uniform
        assert proj.weight.abs().max() <= bound
        assert abs(proj.weight.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    assert module.is_init  # a parent's init_weights() leaves it alone, as in mmcv


def small_module(seed=0, **kwargs) -> MultiScaleDeformableAttention:
    """embed 8, 2 heads, 3 levels, 2 points, parameters perturbed away from the init."""
    torch.manual_seed(seed)
    kwargs = dict(embed_dims=8, num_heads=2, num_levels=3, num_points=2, dropout=0.0) | kwargs
    module = MultiScaleDeformableAttention(**kwargs).double()
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    return module


def tokens(*shape, seed):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def by_hand(module, query, value, reference_points, identity):
    """Batch-first module maths, with the sampling locations computed level by level."""
    B, Q, _ = query.shape
    M, L, P = module.num_heads, module.num_levels, module.num_points
    v = module.value_proj(value).view(B, NUM_VALUES, M, -1)
    offsets = module.sampling_offsets(query).view(B, Q, M, L, P, 2)
    weights = module.attention_weights(query).view(B, Q, M, L * P).softmax(-1).view(B, Q, M, L, P)
    locations = torch.empty_like(offsets)
    for l, (h, w) in enumerate(SHAPES):
        ref = reference_points[:, :, None, l, None, :]                   # (B, Q, 1, 1, 2|4)
        if reference_points.shape[-1] == 2:
            locations[:, :, :, l] = ref + offsets[:, :, :, l] / torch.tensor([w, h])
        else:
            cx, cy, bw, bh = ref.unbind(-1)
            locations[:, :, :, l, :, 0] = cx + offsets[:, :, :, l, :, 0] * bw / (2 * P)
            locations[:, :, :, l, :, 1] = cy + offsets[:, :, :, l, :, 1] * bh / (2 * P)
    out = multi_scale_deformable_attn_pytorch(v, torch.tensor(SHAPES), locations, weights)
    return module.output_proj(out) + identity


@pytest.mark.parametrize('ref_dim', [2, 4])
def test_reference_point_formulas(ref_dim):
    module = small_module(batch_first=True)
    query, value = tokens(2, 6, 8, seed=1), tokens(2, NUM_VALUES, 8, seed=2)
    ref = torch.rand(2, 6, 3, ref_dim, dtype=torch.float64) * 0.8 + 0.1
    out = module(query, value=value, reference_points=ref, spatial_shapes=torch.tensor(SHAPES))
    torch.testing.assert_close(out, by_hand(module, query, value, ref, query))


def test_batch_first_and_seq_first_agree():
    first, seq = small_module(batch_first=True), small_module(batch_first=False)
    seq.load_state_dict(first.state_dict())
    query, value = tokens(2, 6, 8, seed=1), tokens(2, NUM_VALUES, 8, seed=2)
    ref = torch.rand(2, 6, 3, 2, dtype=torch.float64)
    kw = dict(reference_points=ref, spatial_shapes=torch.tensor(SHAPES))
    out = first(query, value=value, **kw)
    out_seq = seq(query.transpose(0, 1), value=value.transpose(0, 1), **kw)
    assert out_seq.shape == (6, 2, 8)
    torch.testing.assert_close(out_seq.transpose(0, 1), out)


def test_key_padding_mask_zeroes_padded_values():
    module = small_module(batch_first=True)
    query, value = tokens(2, 6, 8, seed=1), tokens(2, NUM_VALUES, 8, seed=2)
    mask = torch.zeros(2, NUM_VALUES, dtype=torch.bool)
    mask[0, 30:] = True
    mask[1, ::3] = True
    kw = dict(reference_points=torch.rand(2, 6, 3, 2, dtype=torch.float64),
              spatial_shapes=torch.tensor(SHAPES))
    out = module(query, value=value, key_padding_mask=mask, **kw)
    other = torch.where(mask[..., None], tokens(2, NUM_VALUES, 8, seed=3) * 100, value)
    torch.testing.assert_close(module(query, value=other, key_padding_mask=mask, **kw), out)
    assert not torch.allclose(module(query, value=value, **kw), out)
    # Zeroed AFTER value_proj (its bias is not zero here): padding contributes nothing at all.
    offsets, weights = [], []
    module.sampling_offsets.register_forward_hook(lambda m, i, o: offsets.append(o))
    module.attention_weights.register_forward_hook(lambda m, i, o: weights.append(o))
    module(query, value=value, key_padding_mask=mask, **kw)
    projected = module.value_proj(value).masked_fill(mask[..., None], 0).view(2, NUM_VALUES, 2, 4)
    ref = kw['reference_points'][:, :, None, :, None, :]
    locations = ref + offsets[0].view(2, 6, 2, 3, 2, 2) / torch.tensor(SHAPES).flip(-1)[:, None]
    attn = weights[0].view(2, 6, 2, 6).softmax(-1).view(2, 6, 2, 3, 2)
    expected = module.output_proj(multi_scale_deformable_attn_pytorch(
        projected, torch.tensor(SHAPES), locations, attn)) + query
    torch.testing.assert_close(out, expected)


def test_identity_and_query_pos():
    module = small_module(batch_first=True)
    query, pos, other = tokens(2, 6, 8, seed=1), tokens(2, 6, 8, seed=2), tokens(2, 6, 8, seed=3)
    value = tokens(2, NUM_VALUES, 8, seed=4)
    ref = torch.rand(2, 6, 3, 4, dtype=torch.float64)
    kw = dict(reference_points=ref, spatial_shapes=torch.tensor(SHAPES))
    # query_pos moves only the offsets and the attention weights; the residual is the query
    # without it.
    torch.testing.assert_close(module(query, value=value, query_pos=pos, **kw),
                               by_hand(module, query + pos, value, ref, identity=query))
    torch.testing.assert_close(module(query, value=value, identity=other, **kw)
                               - module(query, value=value, **kw), other - query)
    # Encoder self-attention: value defaults to the query, also without query_pos.
    tok, tok_pos = tokens(1, NUM_VALUES, 8, seed=5), tokens(1, NUM_VALUES, 8, seed=6)
    enc_ref = torch.rand(1, NUM_VALUES, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(
        module(tok, query_pos=tok_pos, reference_points=enc_ref,
               spatial_shapes=torch.tensor(SHAPES)),
        by_hand(module, tok + tok_pos, tok, enc_ref, identity=tok))
    # key and the extra keywords a transformer layer passes are ignored, as in mmcv.
    torch.testing.assert_close(module(query, key=other, value=value, key_pos=pos, attn_mask=None,
                                      **kw), module(query, value=value, **kw))


def test_uniform_attention_at_init():
    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(embed_dims=8, num_heads=2, num_levels=3, num_points=2,
                                           dropout=0.0, batch_first=True).double()
    query, value = tokens(1, 4, 8, seed=1), tokens(1, NUM_VALUES, 8, seed=2)
    ref = torch.rand(1, 4, 3, 2, dtype=torch.float64)
    out = module(query, value=value, reference_points=ref, spatial_shapes=torch.tensor(SHAPES))
    bias = module.sampling_offsets.bias.view(2, 3, 2, 2)                 # query-independent
    locations = ref[:, :, None, :, None, :] + bias / torch.tensor(SHAPES).flip(-1)[:, None]
    uniform = torch.full((1, 4, 2, 3, 2), 1 / 6, dtype=torch.float64)    # softmax over L * P
    expected = module.output_proj(multi_scale_deformable_attn_pytorch(
        module.value_proj(value).view(1, NUM_VALUES, 2, 4), torch.tensor(SHAPES), locations,
        uniform)) + query
    torch.testing.assert_close(out, expected)


def test_errors():
    module = small_module(batch_first=True)
    query, value = tokens(1, 4, 8, seed=1), tokens(1, NUM_VALUES, 8, seed=2)
    with pytest.raises(ValueError, match=r'\(1, 4, 3, 3\)'):
        module(query, value=value, reference_points=torch.rand(1, 4, 3, 3, dtype=torch.float64),
               spatial_shapes=torch.tensor(SHAPES))
    with pytest.raises(ValueError, match='value has 48 tokens'):
        module(query, value=value[:, 1:], reference_points=torch.rand(1, 4, 3, 2),
               spatial_shapes=torch.tensor(SHAPES))
    with pytest.raises(ValueError, match='divisible by num_heads'):
        MultiScaleDeformableAttention(embed_dims=10, num_heads=4)
    with pytest.raises(ValueError, match='norm_cfg'):
        MultiScaleDeformableAttention(norm_cfg=dict(type='LN'))


def test_cpu_never_imports_mmcv_ops(monkeypatch):
    def fail():
        raise AssertionError('mmcv.ops looked up for CPU tensors')
    monkeypatch.setattr(ms_deform_attn, '_mmcv_cuda_function', fail)
    module = small_module(batch_first=True)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        module(tokens(1, 4, 8, seed=1), value=tokens(1, NUM_VALUES, 8, seed=2),
               reference_points=torch.rand(1, 4, 3, 2, dtype=torch.float64),
               spatial_shapes=torch.tensor(SHAPES))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_cuda_matches_cpu():
    module = small_module(batch_first=True).float()
    query, value = tokens(2, 6, 8, seed=1).float(), tokens(2, NUM_VALUES, 8, seed=2).float()
    kw = dict(reference_points=torch.rand(2, 6, 3, 4), spatial_shapes=torch.tensor(SHAPES))
    out = module(query, value=value, **kw)
    out_cuda = module.cuda()(query.cuda(), value=value.cuda(),
                             **{k: v.cuda() for k, v in kw.items()})
    torch.testing.assert_close(out_cuda.cpu(), out, atol=1e-5, rtol=1e-5)


def test_the_module_samples_with_the_path_asked_for(monkeypatch):
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(embed_dims=16, num_heads=2, num_levels=3, num_points=2,
                                         batch_first=True).eval()
    query = torch.randn(1, 6, 16)
    value = torch.randn(1, NUM_VALUES, 16)
    reference = torch.rand(1, 6, 3, 2)
    called = []
    monkeypatch.setitem(ms_deform_attn.SAMPLING_PATHS, 'gather',
                        lambda *args: called.append(1) or multi_scale_deformable_attn_gather(*args))
    with torch.no_grad():
        default = attn(query, value=value, reference_points=reference,
                       spatial_shapes=torch.tensor(SHAPES))
        with deform_attn_sampling('gather'):
            gathered = attn(query, value=value, reference_points=reference,
                            spatial_shapes=torch.tensor(SHAPES))
    assert called == [1]
    torch.testing.assert_close(gathered, default, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="path must be one of"):
        with deform_attn_sampling('cuda_kernel'):
            pass
