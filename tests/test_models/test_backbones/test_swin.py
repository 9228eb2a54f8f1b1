"""SwinTransformer: mmdetection's state-dict layout (Swin-T, and Co-DINO's Swin-L built on the meta
device), output shapes for sizes that do not divide, the shifted-window mask and the window
attention against brute-force references, with_cp, frozen stages, init, and loading checkpoints
in mmdetection's and in the original Swin release's layout. Forward passes use tiny models.

The expected key lists are written here from mmdetection 3.3's ``mmdet/models/backbones/swin.py``
(``SwinTransformer`` > ``stages`` (``SwinBlockSequence``) > ``blocks`` (``SwinBlock``: ``norm1``,
``attn.w_msa`` (``WindowMSA``: table parameter, index buffer, ``qkv``, ``proj``), ``norm2``,
``ffn`` (mmcv ``FFN``)) and ``downsample`` (``PatchMerging``), then ``norm{i}``) and the original
release's from microsoft/Swin-Transformer ``models/swin_transformer.py``.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rcnn_det.engine import CheckpointMismatchError
from rcnn_det.models.backbones import SwinTransformer
from rcnn_det.models.backbones.swin import (PatchMerging, ShiftWindowMSA, WindowMSA,
                                            relative_position_index, shifted_window_mask,
                                            swin_original_to_mmdet, window_partition,
                                            window_reverse)
from rcnn_det.registry import MODELS

# A tiny Swin: 4 stages, channels 24..192, heads dividing them.
TINY = dict(embed_dims=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4), window_size=7)
# Smaller still, for checkpoints: 2 stages, window 3.
MINI = dict(embed_dims=16, depths=(2, 2), num_heads=(1, 2), strides=(4, 2), window_size=3,
            out_indices=(0, 1), drop_path_rate=0.)
# projects/CO-DETR/configs/codino/co_dino_5scale_swin_l_16xb1_1x_coco.py (mmdetection 3.x)
CO_DINO_SWIN_L = dict(
    type='SwinTransformer', pretrain_img_size=384, embed_dims=192, depths=[2, 2, 18, 2],
    num_heads=[6, 12, 24, 48], window_size=12, mlp_ratio=4, qkv_bias=True, qk_scale=None,
    drop_rate=0., attn_drop_rate=0., drop_path_rate=0.3, patch_norm=True,
    out_indices=(0, 1, 2, 3), with_cp=False, convert_weights=True,
    init_cfg=dict(type='Pretrained', checkpoint='https://github.com/SwinTransformer/storage/'
                  'releases/download/v1.0.0/swin_large_patch4_window12_384_22k.pth'))


def mmdet_swin_shapes(embed_dims: int, depths, num_heads, window_size: int, out_indices,
                      mlp_ratio: int = 4, patch_size: int = 4) -> dict[str, tuple]:
    """Keys and shapes of mmdetection's SwinTransformer.state_dict(), in its order."""
    C, w = embed_dims, window_size
    shapes = {'patch_embed.projection.weight': (C, 3, patch_size, patch_size),
              'patch_embed.projection.bias': (C,), 'patch_embed.norm.weight': (C,),
              'patch_embed.norm.bias': (C,)}
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        c = C * 2 ** i
        for j in range(depth):
            p = f'stages.{i}.blocks.{j}.'
            shapes.update({
                p + 'norm1.weight': (c,), p + 'norm1.bias': (c,),
                p + 'attn.w_msa.relative_position_bias_table': ((2 * w - 1) ** 2, heads),
                p + 'attn.w_msa.relative_position_index': (w * w, w * w),
                p + 'attn.w_msa.qkv.weight': (3 * c, c), p + 'attn.w_msa.qkv.bias': (3 * c,),
                p + 'attn.w_msa.proj.weight': (c, c), p + 'attn.w_msa.proj.bias': (c,),
                p + 'norm2.weight': (c,), p + 'norm2.bias': (c,),
                p + 'ffn.layers.0.0.weight': (mlp_ratio * c, c),
                p + 'ffn.layers.0.0.bias': (mlp_ratio * c,),
                p + 'ffn.layers.1.weight': (c, mlp_ratio * c), p + 'ffn.layers.1.bias': (c,)})
        if i < len(depths) - 1:
            p = f'stages.{i}.downsample.'
            shapes.update({p + 'norm.weight': (4 * c,), p + 'norm.bias': (4 * c,),
                           p + 'reduction.weight': (2 * c, 4 * c)})
    for i in out_indices:
        shapes.update({f'norm{i}.weight': (C * 2 ** i,), f'norm{i}.bias': (C * 2 ** i,)})
    return shapes


def num_parameters(shapes: dict[str, tuple]) -> int:
    return sum(math.prod(s) for k, s in shapes.items() if 'relative_position_index' not in k)


def state_shapes(model: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------

def test_swin_t_state_dict_is_mmdetections():
    with torch.device('meta'):
        model = SwinTransformer()   # mmdetection's defaults: Swin-T
    expected = mmdet_swin_shapes(96, (2, 2, 6, 2), (3, 6, 12, 24), 7, (0, 1, 2, 3))
    assert list(model.state_dict()) == list(expected)   # names and order
    assert state_shapes(model) == expected
    assert len(expected) == 189
    # mmdetection's Swin-T backbone: timm's swin_tiny (28,288,354) without the classifier
    # (768 * 1000 + 1000) and its norm (2 * 768), with the output norms (2 * (96 + ... + 768))
    assert num_parameters(expected) == 27_520_698
    assert sum(p.numel() for p in model.parameters()) == 27_520_698
    assert model.num_features == [96, 192, 384, 768]


def test_co_dino_swin_l_state_dict_is_mmdetections():
    with torch.device('meta'):   # 195M parameters: shapes only, nothing allocated
        model = MODELS.build(CO_DINO_SWIN_L)
    expected = mmdet_swin_shapes(192, (2, 2, 18, 2), (6, 12, 24, 48), 12, (0, 1, 2, 3))
    assert list(model.state_dict()) == list(expected)
    assert state_shapes(model) == expected
    assert len(expected) == 357
    assert sum(p.numel() for p in model.parameters()) == num_parameters(expected) == 195_201_204
    shapes = state_shapes(model)
    for key, shape in [('patch_embed.projection.weight', (192, 3, 4, 4)),
                       ('stages.2.blocks.17.attn.w_msa.relative_position_bias_table', (529, 24)),
                       ('stages.2.blocks.17.attn.w_msa.relative_position_index', (144, 144)),
                       ('stages.3.blocks.1.ffn.layers.0.0.weight', (6144, 1536)),
                       ('stages.3.blocks.1.ffn.layers.1.weight', (1536, 6144)),
                       ('stages.2.downsample.reduction.weight', (1536, 3072)),
                       ('stages.0.downsample.norm.weight', (768,)), ('norm3.bias', (1536,))]:
        assert shapes[key] == shape
    assert 'stages.3.downsample.norm.weight' not in shapes and 'norm.weight' not in shapes
    # stochastic depth rises linearly over the 24 blocks to 0.3 (mmdetection's linspace)
    rates = [block.drop_path.drop_prob for stage in model.stages for block in stage.blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.3) and len(rates) == 24
    assert [b.attn.shift_size for b in model.stages[2].blocks[:3]] == [0, 6, 0]


def test_patch_norm_false_and_out_indices_change_keys_as_in_mmdetection():
    with torch.device('meta'):
        model = SwinTransformer(patch_norm=False, out_indices=(1, 3))
    keys = list(model.state_dict())
    assert not any('patch_embed.norm' in k or 'downsample.norm' in k for k in keys)
    assert [k for k in keys if k.startswith('norm')] == [
        'norm1.weight', 'norm1.bias', 'norm3.weight', 'norm3.bias']


# ------------------------------------------------------------------------------------------
# Shapes, windows, attention
# ------------------------------------------------------------------------------------------

def test_output_shapes_for_sizes_that_do_not_divide():
    model = SwinTransformer(**TINY).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 97, 131))
    # patch embedding pads to 100 x 132 (25 x 33 patches); each PatchMerging pads to even
    expected_hw = [(25, 33), (13, 17), (7, 9), (4, 5)]
    assert [tuple(o.shape) for o in outs] == [(2, c, h, w) for c, (h, w) in
                                             zip((24, 48, 96, 192), expected_hw)]
    assert all(torch.isfinite(o).all() for o in outs)
    some = SwinTransformer(**TINY, out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = some(torch.randn(1, 3, 64, 80))
    assert [tuple(o.shape) for o in outs] == [(1, 48, 8, 10), (1, 192, 2, 3)]


def test_window_partition_round_trip():
    x = torch.randn(2, 6, 9, 5)
    windows = window_partition(x, 3)
    assert windows.shape == (2 * 2 * 3, 9, 5)
    # window 1 of image 0: rows 0..2, columns 3..5, row-major
    torch.testing.assert_close(windows[1], x[0, 0:3, 3:6].reshape(9, 5))
    torch.testing.assert_close(window_reverse(windows, 3, 6, 9), x)


def brute_force_index(window: int) -> torch.Tensor:
    """The original's relative position index, pair by pair."""
    coords = [(y, x) for y in range(window) for x in range(window)]
    return torch.tensor([[(yi - yj + window - 1) * (2 * window - 1) + (xi - xj + window - 1)
                          for (yj, xj) in coords] for (yi, xi) in coords])


def test_relative_position_index_matches_brute_force():
    for window in (1, 3, 7):
        assert torch.equal(relative_position_index((window, window)), brute_force_index(window))


def brute_force_shift_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """The original's construction: label the three slices of each axis, then compare the
    labels of every token pair of every window."""
    label = torch.zeros(height, width, dtype=torch.long)
    slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    count = 0
    for hs in slices:
        for ws in slices:
            label[hs, ws] = count
            count += 1
    masks = []
    for wy in range(height // window):
        for wx in range(width // window):
            tokens = [label[wy * window + i, wx * window + j].item()
                      for i in range(window) for j in range(window)]
            masks.append([[0.0 if a == b else -100.0 for b in tokens] for a in tokens])
    return torch.tensor(masks)


@pytest.mark.parametrize('height,width,window,shift', [
    (14, 21, 7, 3), (7, 7, 7, 3), (12, 24, 6, 3), (10, 15, 5, 2), (6, 9, 3, 1)])
def test_shifted_window_mask_matches_brute_force(height, width, window, shift):
    mask = shifted_window_mask(height, width, window, shift)
    torch.testing.assert_close(mask, brute_force_shift_mask(height, width, window, shift))


def reference_window_attention(msa: WindowMSA, x: torch.Tensor,
                               mask: torch.Tensor | None) -> torch.Tensor:
    """Plain einsum attention: (B * nW, N, C), the bias read pair by pair from the table."""
    BnW, N, C = x.shape
    h = msa.num_heads
    d = C // h
    q, k, v = F.linear(x, msa.qkv.weight, msa.qkv.bias).view(BnW, N, 3, h, d).unbind(2)
    logits = torch.einsum('bnhd,bmhd->bhnm', q * d ** -0.5, k)
    index = brute_force_index(msa.window_size[0])
    bias = msa.relative_position_bias_table[index]                        # (N, N, h)
    logits = logits + bias.permute(2, 0, 1)[None]
    if mask is not None:
        nW = mask.shape[0]
        logits = (logits.view(BnW // nW, nW, h, N, N) + mask[None, :, None]).view(BnW, h, N, N)
    out = torch.einsum('bhnm,bmhd->bnhd', logits.softmax(-1), v).reshape(BnW, N, C)
    return F.linear(out, msa.proj.weight, msa.proj.bias)


def random_window_msa(embed_dims: int = 12, num_heads: int = 3, window: int = 3) -> WindowMSA:
    torch.manual_seed(0)
    msa = WindowMSA(embed_dims, num_heads, (window, window))
    with torch.no_grad():
        msa.relative_position_bias_table.normal_()
        for p in (msa.qkv.weight, msa.qkv.bias, msa.proj.weight, msa.proj.bias):
            p.normal_(std=0.5)
    return msa.eval()


def test_window_attention_of_one_window_matches_einsum_reference():
    msa = random_window_msa()
    x = torch.randn(1, 9, 12, requires_grad=True)
    out = msa(x)
    ref = reference_window_attention(msa, x, None)
    torch.testing.assert_close(out, ref)
    grad, = torch.autograd.grad(out.square().sum(), msa.relative_position_bias_table)
    ref_grad, = torch.autograd.grad(ref.square().sum(), msa.relative_position_bias_table)
    torch.testing.assert_close(grad, ref_grad)


def test_masked_window_attention_of_two_images_matches_einsum_reference():
    msa = random_window_msa()
    mask = shifted_window_mask(6, 6, 3, 1)                                # 4 windows
    x = torch.randn(2 * 4, 9, 12)
    torch.testing.assert_close(msa(x, mask), reference_window_attention(msa, x, mask))


def test_shift_window_msa_matches_window_by_window_reference():
    """Padding, cyclic shift, windows, mask, reverse shift and crop, against a loop over the
    windows of the padded, rolled map (the padded zero tokens take part, as in mmdetection)."""
    torch.manual_seed(0)
    layer = ShiftWindowMSA(12, 3, window_size=3, shift_size=1).eval()
    layer.w_msa.load_state_dict(random_window_msa().state_dict())
    H, W = 5, 7
    x = torch.randn(2, H * W, 12)
    padded = F.pad(x.view(2, H, W, 12), (0, 0, 0, 2, 0, 1))               # 6 x 9
    rolled = torch.roll(padded, (-1, -1), (1, 2))
    masks = brute_force_shift_mask(6, 9, 3, 1)
    out = torch.zeros_like(rolled)
    for b in range(2):
        for wy in range(2):
            for wx in range(3):
                rows, cols = slice(3 * wy, 3 * wy + 3), slice(3 * wx, 3 * wx + 3)
                tokens = rolled[b, rows, cols].reshape(1, 9, 12)
                attended = reference_window_attention(layer.w_msa, tokens,
                                                      masks[wy * 3 + wx][None])
                out[b, rows, cols] = attended.view(3, 3, 12)
    expected = torch.roll(out, (1, 1), (1, 2))[:, :H, :W].reshape(2, H * W, 12)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, (H, W)), expected)


class OriginalPatchMerging(nn.Module):
    """The original release's PatchMerging (with the detection release's odd-size padding):
    the four 2 x 2 neighbours concatenated as x0, x1, x2, x3, then norm, then linear."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, L, C = x.shape
        x = F.pad(x.view(B, H, W, C), (0, 0, 0, W % 2, 0, H % 2))
        x0 = x[:, 0::2, 0::2, :]
        x1 = x[:, 1::2, 0::2, :]
        x2 = x[:, 0::2, 1::2, :]
        x3 = x[:, 1::2, 1::2, :]
        x = torch.cat([x0, x1, x2, x3], -1).view(B, -1, 4 * C)
        return self.reduction(self.norm(x))


@pytest.mark.parametrize('H,W', [(6, 8), (5, 7)])
def test_patch_merging_equals_the_original_after_conversion(H, W):
    torch.manual_seed(0)
    original = OriginalPatchMerging(5)
    with torch.no_grad():
        original.norm.weight.normal_()
        original.norm.bias.normal_()
    ours = PatchMerging(5, 10)
    converted = swin_original_to_mmdet(
        {f'layers.0.downsample.{k}': v for k, v in original.state_dict().items()})
    ours.load_state_dict({k[len('stages.0.downsample.'):]: v for k, v in converted.items()})
    x = torch.randn(2, H * W, 5)
    out, hw = ours(x, (H, W))
    assert hw == ((H + 1) // 2, (W + 1) // 2)
    with torch.no_grad():
        torch.testing.assert_close(out, original(x, H, W))
        # the same weights loaded without the reordering give another result
        ours.load_state_dict(original.state_dict())
        assert not torch.allclose(ours(x, (H, W))[0], original(x, H, W), atol=1e-3)


# ------------------------------------------------------------------------------------------
# Training behaviour
# ------------------------------------------------------------------------------------------

def test_with_cp_gives_identical_outputs_and_gradients():
    kwargs = dict(TINY, drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.3)
    plain = SwinTransformer(**kwargs).train()
    checkpointed = SwinTransformer(**kwargs, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 45, 61)
    results = []
    for model in (plain, checkpointed):
        calls = []
        hook = model.stages[1].blocks[1].norm1.register_forward_hook(lambda *a: calls.append(1))
        torch.manual_seed(0)   # same dropout and drop-path draws
        outs = model(x)
        forward_calls = len(calls)
        sum(o.square().mean() for o in outs).backward()
        hook.remove()
        results.append((outs, [p.grad for p in model.parameters()], forward_calls, len(calls)))
    (outs, grads, fwd, total), (outs_cp, grads_cp, fwd_cp, total_cp) = results
    for out, out_cp in zip(outs, outs_cp):
        torch.testing.assert_close(out_cp, out, rtol=0, atol=0)
    for grad, grad_cp in zip(grads, grads_cp):
        torch.testing.assert_close(grad_cp, grad, rtol=1e-5, atol=1e-7)
    # the checkpointed block ran again during backward; the plain one did not
    assert (fwd, total) == (1, 1) and (fwd_cp, total_cp) == (1, 2)


def test_with_cp_is_off_in_eval_and_without_grad():
    model = SwinTransformer(**TINY, with_cp=True).eval()
    calls = []
    model.stages[0].blocks[0].norm1.register_forward_hook(lambda *a: calls.append(1))
    sum(o.sum() for o in model(torch.randn(1, 3, 32, 32))).backward()
    assert len(calls) == 1
    model.train()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert len(calls) == 2


def test_with_cp_after_frozen_stages_still_trains_later_stages():
    model = SwinTransformer(**TINY, with_cp=True, frozen_stages=1).train()
    sum(o.square().mean() for o in model(torch.randn(1, 3, 32, 32))).backward()
    assert model.stages[0].blocks[0].attn.w_msa.qkv.weight.grad is None
    assert model.stages[1].blocks[0].attn.w_msa.qkv.weight.grad is not None


def test_frozen_stages():
    model = SwinTransformer(**TINY, frozen_stages=1, drop_rate=0.1).train()
    frozen = [model.patch_embed, model.stages[0], model.norm0, model.drop_after_pos]
    for module in frozen:
        assert all(not p.requires_grad for p in module.parameters())
        assert all(not m.training for m in module.modules())
    for module in (model.stages[1], model.stages[3], model.norm1):
        assert all(p.requires_grad for p in module.parameters())
        assert all(m.training for m in module.modules())
    sum(o.square().mean() for o in model(torch.randn(1, 3, 32, 32))).backward()
    assert model.patch_embed.projection.weight.grad is None
    assert model.stages[0].downsample.reduction.weight.grad is None
    assert model.stages[1].blocks[0].norm1.weight.grad is not None
    only_embed = SwinTransformer(**TINY, frozen_stages=0)
    assert not any(p.requires_grad for p in only_embed.patch_embed.parameters())
    assert all(p.requires_grad for p in only_embed.stages.parameters())
    assert all(p.requires_grad for p in SwinTransformer(**TINY).parameters())


def test_init_weights_from_scratch_is_mmdetections():
    torch.manual_seed(0)
    model = SwinTransformer(**TINY, use_abs_pos_embed=True, pretrain_img_size=32)
    model.init_weights()
    fc1 = model.stages[3].blocks[0].ffn.layers[0][0]
    # mmdetection's trunc_normal_init(std=0.02) truncates at +-2 (absolute): in effect N(0, 0.02)
    assert fc1.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert fc1.weight.abs().max().item() < 2 and (fc1.bias == 0).all()
    assert model.stages[0].downsample.reduction.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert (model.norm3.weight == 1).all() and (model.norm3.bias == 0).all()
    assert (model.stages[0].blocks[0].attn.w_msa.relative_position_bias_table == 0).all()
    assert 0 < model.absolute_pos_embed.std().item() < 0.03


def test_absolute_position_embedding_follows_the_input_size():
    model = SwinTransformer(**TINY, use_abs_pos_embed=True, pretrain_img_size=32).eval()
    assert model.absolute_pos_embed.shape == (1, 64, 24)
    with torch.no_grad():
        model.absolute_pos_embed.normal_()
        assert model._position_embedding((8, 8)) is model.absolute_pos_embed
        assert model._position_embedding((10, 14)).shape == (1, 140, 24)
        assert [o.shape[-2:] for o in model(torch.randn(1, 3, 40, 56))][0] == (10, 14)


def test_argument_errors():
    with pytest.raises(ValueError, match='patch_size'):
        SwinTransformer(**TINY, strides=(2, 2, 2, 2))
    with pytest.raises(ValueError, match='not both'):
        SwinTransformer(pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='a.pth'))
    with pytest.raises(ValueError, match='Pretrained'):
        SwinTransformer(init_cfg=dict(type='Kaiming', layer='Conv2d'))
    with pytest.raises(ValueError, match='num_heads'):
        SwinTransformer(embed_dims=24, num_heads=(5, 2, 3, 4))
    assert SwinTransformer(**TINY, pretrained='a.pth').init_cfg == dict(type='Pretrained',
                                                                        checkpoint='a.pth')


# ------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------

def original_swin_state_dict(embed_dims: int, depths, num_heads, window: int,
                             num_classes: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the original release's names and shapes (a classification model,
    with its head, final norm and the attn_mask buffers of its shifted blocks)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    C = embed_dims
    sd = {'patch_embed.proj.weight': rand(C, 3, 4, 4), 'patch_embed.proj.bias': rand(C),
          'patch_embed.norm.weight': 1 + rand(C), 'patch_embed.norm.bias': rand(C)}
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        c = C * 2 ** i
        for j in range(depth):
            p = f'layers.{i}.blocks.{j}.'
            sd.update({p + 'norm1.weight': 1 + rand(c), p + 'norm1.bias': rand(c),
                       p + 'attn.relative_position_bias_table': rand((2 * window - 1) ** 2,
                                                                     heads),
                       p + 'attn.relative_position_index': brute_force_index(window),
                       p + 'attn.qkv.weight': rand(3 * c, c), p + 'attn.qkv.bias': rand(3 * c),
                       p + 'attn.proj.weight': rand(c, c), p + 'attn.proj.bias': rand(c),
                       p + 'norm2.weight': 1 + rand(c), p + 'norm2.bias': rand(c),
                       p + 'mlp.fc1.weight': rand(4 * c, c), p + 'mlp.fc1.bias': rand(4 * c),
                       p + 'mlp.fc2.weight': rand(c, 4 * c), p + 'mlp.fc2.bias': rand(c)})
            if j % 2 == 1:
                sd[p + 'attn_mask'] = torch.zeros(4, window ** 2, window ** 2)
        if i < len(depths) - 1:
            p = f'layers.{i}.downsample.'
            sd.update({p + 'reduction.weight': rand(2 * c, 4 * c),
                       p + 'norm.weight': 1 + rand(4 * c), p + 'norm.bias': rand(4 * c)})
    last = C * 2 ** (len(depths) - 1)
    sd.update({'norm.weight': 1 + rand(last), 'norm.bias': rand(last),
               'head.weight': rand(num_classes, last), 'head.bias': rand(num_classes)})
    return sd


def build_pretrained(path, **kwargs) -> SwinTransformer:
    model = MODELS.build(dict(type='SwinTransformer', **dict(MINI, **kwargs),
                              init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    model.init_weights()
    return model.eval()


def randomised(**kwargs) -> SwinTransformer:
    torch.manual_seed(1)
    model = SwinTransformer(**dict(MINI, **kwargs))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def outputs(model: SwinTransformer, size=(37, 45)) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3)))


def test_original_layout_checkpoint_loads_with_convert_weights(tmp_path):
    original = original_swin_state_dict(16, (2, 2), (1, 2), 3)
    path = tmp_path / 'swin_original.pth'
    torch.save({'model': original}, path)
    loaded = build_pretrained(path, convert_weights=True)
    direct = SwinTransformer(**MINI).eval()
    result = direct.load_state_dict(swin_original_to_mmdet(original), strict=False)
    assert sorted(result.missing_keys) == ['norm0.bias', 'norm0.weight', 'norm1.bias',
                                           'norm1.weight']   # ImageNet models have none
    assert result.unexpected_keys == []
    for a, b in zip(outputs(loaded), outputs(direct)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # each tensor where mmdetection's swin_converter puts it
    state = loaded.state_dict()
    for ours, theirs in [
            ('patch_embed.projection.weight', 'patch_embed.proj.weight'),
            ('stages.1.blocks.1.attn.w_msa.qkv.weight', 'layers.1.blocks.1.attn.qkv.weight'),
            ('stages.1.blocks.1.attn.w_msa.relative_position_bias_table',
             'layers.1.blocks.1.attn.relative_position_bias_table'),
            ('stages.0.blocks.1.ffn.layers.0.0.weight', 'layers.0.blocks.1.mlp.fc1.weight'),
            ('stages.0.blocks.1.ffn.layers.1.bias', 'layers.0.blocks.1.mlp.fc2.bias'),
            ('stages.1.blocks.0.norm2.weight', 'layers.1.blocks.0.norm2.weight')]:
        assert torch.equal(state[ours], original[theirs]), ours
    # the merged channels: original (block k of 4, channel c) -> unfold (channel c, offset p)
    reduction = original['layers.0.downsample.reduction.weight'].view(32, 4, 16)
    expected = reduction[:, [0, 2, 1, 3], :].transpose(1, 2).reshape(32, 64)
    assert torch.equal(state['stages.0.downsample.reduction.weight'], expected)
    # the output norms are not in an ImageNet checkpoint: they keep their initial values
    assert (state['norm1.weight'] == 1).all() and (state['norm1.bias'] == 0).all()


def test_mmdetection_detector_checkpoint_loads_its_backbone(tmp_path):
    source = randomised()
    path = tmp_path / 'detector.pth'
    torch.save({'meta': {'epoch': 12}, 'state_dict': {
        **{f'backbone.{k}': v for k, v in source.state_dict().items()},
        'neck.convs.0.weight': torch.zeros(1)}}, path)
    loaded = build_pretrained(path)
    for a, b in zip(outputs(loaded), outputs(source)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    bare = tmp_path / 'backbone.pth'   # a bare backbone state dict, DDP-prefixed
    torch.save({f'module.{k}': v for k, v in source.state_dict().items()}, bare)
    for a, b in zip(outputs(build_pretrained(bare)), outputs(source)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bias_tables_of_another_window_size_are_resized_bicubically(tmp_path):
    source = randomised()                                                  # window 3: 5 x 5
    path = tmp_path / 'window3.pth'
    torch.save(source.state_dict(), path)
    loaded = build_pretrained(path, window_size=5)                         # window 5: 9 x 9
    key = 'stages.1.blocks.0.attn.w_msa.relative_position_bias_table'
    table = source.state_dict()[key]                                       # (25, 2)
    expected = F.interpolate(table.T.reshape(1, 2, 5, 5), size=(9, 9), mode='bicubic',
                             align_corners=False).reshape(2, 81).T
    torch.testing.assert_close(loaded.state_dict()[key], expected)
    index_key = 'stages.1.blocks.0.attn.w_msa.relative_position_index'
    assert torch.equal(loaded.state_dict()[index_key], brute_force_index(5))
    # a table constant per head stays that constant
    with torch.no_grad():
        for block in source.stages[0].blocks:
            block.attn.w_msa.relative_position_bias_table.copy_(torch.tensor([[0.7]]))
    torch.save(source.state_dict(), path)
    loaded = build_pretrained(path, window_size=5)
    torch.testing.assert_close(loaded.stages[0].blocks[1].attn.w_msa.relative_position_bias_table,
                               torch.full((81, 1), 0.7))


def test_checkpoint_errors_name_the_file_and_keys(tmp_path):
    source = randomised()
    path = tmp_path / 'bad.pth'
    extra = dict(source.state_dict(), **{'stages.0.blocks.0.extra.weight': torch.zeros(2)})
    torch.save(extra, path)
    with pytest.raises(CheckpointMismatchError, match=r'bad\.pth(.|\n)*stages\.0\.blocks\.0'
                       r'\.extra\.weight'):
        build_pretrained(path)
    wrong = dict(source.state_dict())
    wrong['stages.1.blocks.0.attn.w_msa.qkv.weight'] = torch.zeros(96, 16)
    torch.save(wrong, path)
    model = SwinTransformer(**MINI, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    before = model.stages[0].blocks[0].norm1.weight.clone()
    with pytest.raises(CheckpointMismatchError, match=r'qkv\.weight: checkpoint \(96, 16\) vs '
                       r'model \(96, 32\)'):
        model.init_weights()
    assert torch.equal(model.stages[0].blocks[0].norm1.weight, before)   # unchanged
    torch.save({'model': original_swin_state_dict(16, (2, 2), (1, 2), 3)}, path)
    with pytest.raises(KeyError, match='convert_weights=True'):
        build_pretrained(path)
    torch.save(source.state_dict(), path)
    with pytest.raises(KeyError, match=r'bad\.pth.*convert_weights=False'):
        build_pretrained(path, convert_weights=True)
    original = original_swin_state_dict(16, (2, 2), (1, 2), 3)
    original['layers.0.blocks.0.attn.rel_bias'] = torch.zeros(1)
    torch.save(original, path)
    with pytest.raises(KeyError, match=r'bad\.pth.*layers\.0\.blocks\.0\.attn\.rel_bias'):
        build_pretrained(path, convert_weights=True)
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        build_pretrained(tmp_path / 'missing.pth')


def test_url_checkpoint_is_read_from_the_hub_cache_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)

    def refuse(*args, **kwargs):
        raise AssertionError('network access attempted')
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', refuse)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', refuse)
    url = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_mini.pth'
    cached = tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'swin_mini.pth'
    with pytest.raises(FileNotFoundError, match=re.escape(str(cached))):
        build_pretrained(url, convert_weights=True)
    cached.parent.mkdir(parents=True)
    original = original_swin_state_dict(16, (2, 2), (1, 2), 3)
    torch.save({'model': original}, cached)
    loaded = build_pretrained(url, convert_weights=True)
    assert torch.equal(loaded.patch_embed.projection.weight, original['patch_embed.proj.weight'])
