"""``SwinTransformer``: mmdetection 3.x's Swin backbone (arguments, state-dict names, outputs).

forward(x (B, 3, H, W)) -> tuple of the stage outputs ``out_indices``, each (B, C_i, H_i, W_i):
stage i has ``embed_dims * 2^i`` channels (Swin-L: 192, 384, 768, 1536) and stride
``patch_size * 2^i``; a size that does not divide is padded at the bottom and right, so
H_0 = ceil(H / 4) and H_{i+1} = ceil(H_i / 2), as in mmdetection.

State-dict keys, their order and shapes equal mmdetection's (``mmdet/models/backbones/swin.py``),
so its detector checkpoints (``backbone.`` prefix) load as they are:

    patch_embed.projection.{weight,bias}       patch_embed.norm.{weight,bias}
    stages.{i}.blocks.{j}.norm1.*              stages.{i}.blocks.{j}.norm2.*
    stages.{i}.blocks.{j}.attn.w_msa.relative_position_bias_table   ((2w-1)^2, heads)
    stages.{i}.blocks.{j}.attn.w_msa.relative_position_index        (w^2, w^2) saved buffer
    stages.{i}.blocks.{j}.attn.w_msa.{qkv,proj}.*
    stages.{i}.blocks.{j}.ffn.layers.0.0.*     stages.{i}.blocks.{j}.ffn.layers.1.*
    stages.{i}.downsample.{norm,reduction}.*   (every stage but the last)
    norm{i}.{weight,bias}                      (i in out_indices)

Pretrained weights: ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` reads a local file (a
URL is read from the torch hub cache, never downloaded) in mmdetection's layout, or, with
``convert_weights=True``, in the original Swin release's layout (microsoft/Swin-Transformer:
``patch_embed.proj``, ``layers.{i}.blocks.{j}.attn.qkv``, ``mlp.fc1``, ...), converted by
``swin_original_to_mmdet``. See ``load_swin_checkpoint``.

Shape letters: B images, H x W a token map (L = H * W tokens), C channels, w the window size,
N = w * w tokens of a window, nW windows of an image, h heads, d = C / h channels of a head.
"""
from __future__ import annotations

import math
import os.path as osp
import re
from collections import OrderedDict
from collections.abc import Mapping
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.drop import DropPath
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from rcnn_det.models.layers.transformer import FFN
from rcnn_det.registry import MODELS

from .torchvision_weights import resolve_torchvision_checkpoint

# Added to the attention logits of token pairs that a shifted window joins but that are not
# neighbours in the image (mmdetection's and the original's value; finite, so a row never
# becomes all -inf).
SHIFT_MASK_VALUE = -100.0


# ----------------------------------------------------------------------------------------------
# Windows
# ----------------------------------------------------------------------------------------------

def window_partition(x: Tensor, window_size: int) -> Tensor:
    """(B, H, W, C), H and W multiples of w -> (B * nW, N, C); the windows of an image in
    row-major order, image after image."""
    B, H, W, C = x.shape
    w = window_size
    x = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5)  # (B, H/w, W/w, w, w, C)
    return x.reshape(-1, w * w, C)


def window_reverse(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """(B * nW, N, C) -> (B, H, W, C): the inverse of ``window_partition``."""
    w = window_size
    C = windows.shape[-1]
    x = windows.view(-1, height // w, width // w, w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, C)


def relative_position_index(window_size: tuple[int, int]) -> Tensor:
    """(N, N) int64: the row of ``relative_position_bias_table`` for query token i and key token
    j of a window, ``(dy + Wh - 1) * (2 * Ww - 1) + (dx + Ww - 1)`` with (dy, dx) the position of
    i minus that of j. The same table as the original's and mmdetection's buffer."""
    wh, ww = window_size
    ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing='ij')
    ys, xs = ys.flatten(), xs.flatten()                                   # (N,), row-major
    dy = ys[:, None] - ys[None, :] + (wh - 1)                             # (N, N) in [0, 2Wh-2]
    dx = xs[:, None] - xs[None, :] + (ww - 1)
    return dy * (2 * ww - 1) + dx


def shifted_window_mask(height: int, width: int, window_size: int, shift_size: int,
                        device: torch.device | None = None,
                        dtype: torch.dtype = torch.float32) -> Tensor:
    """(nW, N, N) additive attention mask of the shifted windows of a (height, width) map
    (multiples of w): 0 for token pairs from the same region, ``SHIFT_MASK_VALUE`` otherwise.

    After rolling the map by -shift, the windows along the bottom and right edges hold tokens
    from up to 4 regions that are not neighbours in the image. Along each axis the regions are
    [0, size - w), [size - w, size - shift) and [size - shift, size) of the unrolled map (the
    original's three slices), numbered 0, 1, 2; a token's region is (row region, column region).
    """
    def axis_region(size: int) -> Tensor:
        idx = torch.arange(size, device=device)
        return (idx >= size - window_size).long() + (idx >= size - shift_size).long()

    region = axis_region(height)[:, None] * 3 + axis_region(width)[None, :]   # (H, W)
    windows = window_partition(region[None, :, :, None], window_size)[..., 0]  # (nW, N)
    different = windows[:, :, None] != windows[:, None, :]                    # (nW, N, N)
    return torch.zeros(different.shape, device=device, dtype=dtype).masked_fill(
        different, SHIFT_MASK_VALUE)


class WindowMSA(BaseModule):
    """Multi-head self-attention inside each window, with a learned relative position bias
    (mmdetection's ``WindowMSA``; keys ``relative_position_bias_table``,
    ``relative_position_index``, ``qkv``, ``proj``).

    forward(x (B * nW, N, C), mask (nW, N, N) or None) -> (B * nW, N, C)
    softmax(q k^T * scale + bias + mask) v, computed by ``F.scaled_dot_product_attention``
    (which may pick a fused GPU kernel that keeps no (B * nW, h, N, N) weights for backward);
    the values equal mmdetection's explicit matmuls up to float rounding.
    """

    def __init__(self, embed_dims: int, num_heads: int, window_size: tuple[int, int],
                 qkv_bias: bool = True, qk_scale: float | None = None,
                 attn_drop_rate: float = 0., proj_drop_rate: float = 0.) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = qk_scale or (embed_dims // num_heads) ** -0.5
        self.attn_drop_rate = attn_drop_rate
        wh, ww = window_size
        # mmdetection leaves the table at zero (its SwinTransformer.init_weights does not call
        # this module's); a pretrained checkpoint fills it.
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        # A saved buffer, as in mmdetection and the original: its checkpoints hold it.
        self.register_buffer('relative_position_index', relative_position_index(window_size))
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def position_bias(self) -> Tensor:
        """(h, N, N): the bias added to the logits of query token i and key token j."""
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)           # (N, N, h) -> (h, N, N)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        BnW, N, C = x.shape
        qkv = self.qkv(x).view(BnW, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                   # 3 x (B*nW, h, N, d)
        bias = self.position_bias()[None]                                 # (1, h, N, N)
        if mask is not None:
            num_windows = mask.shape[0]
            # windows are image-major (index b * nW + w): repeat the per-window mask per image
            bias = (bias + mask[:, None].to(bias.dtype)).repeat(BnW // num_windows, 1, 1, 1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale,
            dropout_p=self.attn_drop_rate if self.training else 0.)      # (B*nW, h, N, d)
        out = out.transpose(1, 2).reshape(BnW, N, C)
        return self.proj_drop(self.proj(out))


class ShiftWindowMSA(BaseModule):
    """Window attention over a token map, windows shifted by ``shift_size`` (0: regular
    windows) (mmdetection's ``ShiftWindowMSA``; key ``w_msa``).

    forward(query (B, L, C), hw_shape (H, W)) -> (B, L, C), stochastic depth applied.
    The map is zero-padded at the bottom and right to multiples of the window; as in
    mmdetection the padded tokens take part in the attention of their windows unmasked.
    """

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, shift_size: int = 0,
                 qkv_bias: bool = True, qk_scale: float | None = None,
                 attn_drop_rate: float = 0., proj_drop_rate: float = 0.,
                 drop_path_rate: float = 0.) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f'ShiftWindowMSA: need 0 <= shift_size < window_size, got '
                             f'shift_size={shift_size}, window_size={window_size}')
        self.window_size = window_size
        self.shift_size = shift_size
        self.w_msa = WindowMSA(embed_dims, num_heads, (window_size, window_size), qkv_bias,
                               qk_scale, attn_drop_rate, proj_drop_rate)
        self.drop = DropPath(drop_path_rate)

    def forward(self, query: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        B, L, C = query.shape
        H, W = hw_shape
        if L != H * W:
            raise ValueError(f'ShiftWindowMSA: {L} tokens do not form a {H} x {W} map')
        w, s = self.window_size, self.shift_size
        x = F.pad(query.view(B, H, W, C), (0, 0, 0, (-W) % w, 0, (-H) % w))
        Hp, Wp = x.shape[1:3]
        mask = None
        if s > 0:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
            mask = shifted_window_mask(Hp, Wp, w, s, device=x.device)
        windows = self.w_msa(window_partition(x, w), mask)                # (B*nW, N, C)
        x = window_reverse(windows, w, Hp, Wp)                            # (B, Hp, Wp, C)
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        x = x[:, :H, :W].reshape(B, L, C)
        return self.drop(x)


class SwinBlock(BaseModule):
    """x + attn(norm1(x)), then x + ffn(norm2(x)) (mmdetection's ``SwinBlock``; keys ``norm1``,
    ``attn``, ``norm2``, ``ffn``), both branches with stochastic depth.

    forward(x (B, L, C), hw_shape (H, W)) -> (B, L, C). With ``with_cp`` and gradients being
    recorded in training mode, the block runs under ``torch.utils.checkpoint``: its activations
    are recomputed during backward instead of kept (same values and gradients, less memory).
    """

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 window_size: int = 7, shift: bool = False, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0.,
                 attn_drop_rate: float = 0., drop_path_rate: float = 0.,
                 act_cfg: dict = dict(type='GELU'), norm_cfg: dict = dict(type='LN'),
                 with_cp: bool = False) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = ShiftWindowMSA(embed_dims, num_heads, window_size,
                                   window_size // 2 if shift else 0, qkv_bias, qk_scale,
                                   attn_drop_rate, drop_rate, drop_path_rate)
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        # mmcv's FFN holds the DropPath as its dropout_layer; rcnn_det's FFN only knows Dropout,
        # so the block applies it (no parameters: the keys are the same).
        self.ffn = FFN(embed_dims, feedforward_channels, num_fcs=2, act_cfg=act_cfg,
                       ffn_drop=drop_rate, add_identity=False)
        self.drop_path = DropPath(drop_path_rate)

    def _inner_forward(self, x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        x = x + self.attn(self.norm1(x), hw_shape)
        return x + self.drop_path(self.ffn(self.norm2(x)))

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        if self.with_cp and self.training and torch.is_grad_enabled():
            # non-reentrant: gradients reach the parameters even when x needs none (a frozen
            # stage before), and the dropout / drop-path masks are replayed (RNG state saved)
            return checkpoint(self._inner_forward, x, hw_shape, use_reentrant=False)
        return self._inner_forward(x, hw_shape)


class SwinBlockSequence(BaseModule):
    """One stage: ``depth`` blocks, shifted windows in every second one, and the
    ``downsample`` (PatchMerging, or None in the last stage) that the backbone applies after
    it has read the stage's output.

    forward(x (B, L, C), hw_shape) -> (B, L, C): the blocks only.
    """

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, depth: int,
                 window_size: int = 7, qkv_bias: bool = True, qk_scale: float | None = None,
                 drop_rate: float = 0., attn_drop_rate: float = 0.,
                 drop_path_rate: float | list[float] = 0.,
                 downsample: nn.Module | None = None, act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN'), with_cp: bool = False) -> None:
        super().__init__()
        rates = drop_path_rate if isinstance(drop_path_rate, list) else [drop_path_rate] * depth
        if len(rates) != depth:
            raise ValueError(f'SwinBlockSequence: {len(rates)} drop path rates for {depth} '
                             'blocks')
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dims, num_heads, feedforward_channels, window_size, i % 2 == 1,
                      qkv_bias, qk_scale, drop_rate, attn_drop_rate, rates[i], act_cfg,
                      norm_cfg, with_cp) for i in range(depth))
        self.downsample = downsample

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        for block in self.blocks:
            x = block(x, hw_shape)
        return x


# ----------------------------------------------------------------------------------------------
# Patches
# ----------------------------------------------------------------------------------------------

def corner_padding(size: int, kernel_size: int, stride: int) -> int:
    """Zeros to add after ``size`` so that the strided kernel covers every input position
    (mmcv's ``AdaptivePadding`` in 'corner' mode)."""
    return max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)


class PatchEmbed(BaseModule):
    """Non-overlapping patches to tokens: pad at the bottom/right to a multiple of the patch,
    a strided conv, then a norm (mmcv's ``PatchEmbed``; keys ``projection``, ``norm``).

    forward(x (B, C_in, H, W)) -> (tokens (B, H' * W', C), (H', W')), H' = ceil(H / patch).
    """

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int,
                 norm_cfg: dict | None = dict(type='LN')) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_channels, embed_dims, patch_size, stride=patch_size)
        self.norm = build_norm_layer(norm_cfg, embed_dims)[1] if norm_cfg else None

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        p = self.patch_size
        x = self.projection(F.pad(x, (0, (-x.shape[-1]) % p, 0, (-x.shape[-2]) % p)))
        hw_shape = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)                 # (B, C, H', W') -> (B, L, C)
        return (x if self.norm is None else self.norm(x)), hw_shape


class PatchMerging(BaseModule):
    """2 x 2 neighbouring tokens to one: concatenated, normed, linearly reduced (mmcv's
    ``PatchMerging``; keys ``norm``, ``reduction``). The map is padded at the bottom/right first.

    forward(x (B, L, C), hw_shape (H, W)) -> ((B, L', out_channels), (H', W')).
    The 4C concatenated channels are in ``nn.Unfold``'s order, channel-major: c * 4 + 2 * dy + dx
    for the token at offset (dy, dx). The original Swin concatenates offset-major,
    [x(0,0), x(1,0), x(0,1), x(1,1)]: ``original_merging_to_unfold`` converts its weights.
    """

    kernel_size = 2

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2,
                 norm_cfg: dict | None = dict(type='LN')) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        merged = self.kernel_size ** 2 * in_channels
        self.norm = build_norm_layer(norm_cfg, merged)[1] if norm_cfg else None
        self.reduction = nn.Linear(merged, out_channels, bias=False)

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        B, L, C = x.shape
        H, W = hw_shape
        if L != H * W:
            raise ValueError(f'PatchMerging: {L} tokens do not form a {H} x {W} map')
        k, s = self.kernel_size, self.stride
        pad_h, pad_w = corner_padding(H, k, s), corner_padding(W, k, s)
        x = F.pad(x.view(B, H, W, C).permute(0, 3, 1, 2), (0, pad_w, 0, pad_h))  # (B, C, H, W)
        out_hw = ((H + pad_h - k) // s + 1, (W + pad_w - k) // s + 1)
        x = F.unfold(x, k, stride=s).transpose(1, 2)                      # (B, L', C * k * k)
        x = x if self.norm is None else self.norm(x)
        return self.reduction(x), out_hw


# ----------------------------------------------------------------------------------------------
# The backbone
# ----------------------------------------------------------------------------------------------

@MODELS.register_module()
class SwinTransformer(BaseModule):
    """mmdetection's Swin Transformer backbone (arguments, defaults, keys, freezing).

    Args (mmdetection's names and defaults):
        pretrain_img_size: image size of pretraining; only sizes ``absolute_pos_embed``.
        embed_dims: channels of stage 0; stage i has embed_dims * 2^i.
        patch_size: side of the patches of the embedding; must equal ``strides[0]``.
        window_size: side of the attention windows (Swin-L 384: 12).
        mlp_ratio: hidden channels of the FFN over embed dims.
        depths, num_heads: blocks and attention heads of each stage.
        strides: patch embedding stride, then the stride of each PatchMerging.
        out_indices: the stages whose (normed) outputs are returned.
        qkv_bias, qk_scale: bias of the qkv projection; logit scale (None: head_dims^-0.5).
        patch_norm: a norm after the patch embedding and in each PatchMerging.
        drop_rate, attn_drop_rate: dropout after projections / of attention weights.
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks to this value.
        use_abs_pos_embed: add a learned absolute position embedding after the patch embedding
            (resized bicubically to inputs of another size, where mmdetection fails).
        act_cfg, norm_cfg: the FFN's activation (GELU or ReLU) and the norm layers (LN).
        with_cp: each block runs under ``torch.utils.checkpoint`` while training.
        pretrained: deprecated, the checkpoint of ``init_cfg=dict(type='Pretrained')``.
        convert_weights: the checkpoint is in the original Swin release's layout.
        frozen_stages: 0 freezes the patch embedding, k > 0 also stages 0..k-1 and their output
            norms (eval mode, no gradient); -1 freezes nothing.
        init_cfg: None (mmdetection's init from scratch) or dict(type='Pretrained',
            checkpoint=PATH).
    """

    def __init__(self, pretrain_img_size: int | tuple[int, ...] = 224, in_channels: int = 3,
                 embed_dims: int = 96, patch_size: int = 4, window_size: int = 7,
                 mlp_ratio: int = 4, depths: tuple[int, ...] = (2, 2, 6, 2),
                 num_heads: tuple[int, ...] = (3, 6, 12, 24),
                 strides: tuple[int, ...] = (4, 2, 2, 2),
                 out_indices: tuple[int, ...] = (0, 1, 2, 3), qkv_bias: bool = True,
                 qk_scale: float | None = None, patch_norm: bool = True, drop_rate: float = 0.,
                 attn_drop_rate: float = 0., drop_path_rate: float = 0.1,
                 use_abs_pos_embed: bool = False, act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN'), with_cp: bool = False,
                 pretrained: str | None = None, convert_weights: bool = False,
                 frozen_stages: int = -1, init_cfg: dict | None = None) -> None:
        if pretrained is not None and init_cfg is not None:
            raise ValueError('SwinTransformer: give init_cfg or pretrained, not both')
        if pretrained is not None:
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        if init_cfg is not None and (not isinstance(init_cfg, dict)
                                     or init_cfg.get('type') != 'Pretrained'
                                     or 'checkpoint' not in init_cfg):
            raise ValueError("SwinTransformer: init_cfg must be None or dict(type='Pretrained', "
                             f'checkpoint=...), as in mmdetection; got {init_cfg!r}')
        num_stages = len(depths)
        if not len(num_heads) == len(strides) == num_stages:
            raise ValueError(f'SwinTransformer: depths, num_heads and strides need one entry '
                             f'per stage, got {depths}, {num_heads}, {strides}')
        if strides[0] != patch_size:
            raise ValueError(f'SwinTransformer: the patch embedding does not overlap, so '
                             f'strides[0] must equal patch_size; got {strides[0]} and '
                             f'{patch_size}')
        if not out_indices or not all(0 <= i < num_stages for i in out_indices):
            raise ValueError(f'SwinTransformer: out_indices must name stages 0..'
                             f'{num_stages - 1}, got {out_indices}')
        if frozen_stages > num_stages:
            raise ValueError(f'SwinTransformer: frozen_stages={frozen_stages} exceeds the '
                             f'{num_stages} stages')
        for i, heads in enumerate(num_heads):
            if (embed_dims * 2 ** i) % heads:
                raise ValueError(f'SwinTransformer: stage {i} has {embed_dims * 2 ** i} '
                                 f'channels, not divisible by num_heads[{i}]={heads}')
        super().__init__(init_cfg=init_cfg)
        size = ((pretrain_img_size,) if isinstance(pretrain_img_size, int)
                else tuple(pretrain_img_size))
        size = size * 2 if len(size) == 1 else size
        self.pretrain_img_size = size
        self.out_indices = tuple(out_indices)
        self.convert_weights = convert_weights
        self.frozen_stages = frozen_stages
        self.use_abs_pos_embed = use_abs_pos_embed
        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size,
                                      norm_cfg if patch_norm else None)
        if use_abs_pos_embed:
            self.pos_embed_hw = (size[0] // patch_size, size[1] // patch_size)
            self.absolute_pos_embed = nn.Parameter(
                torch.zeros(1, self.pos_embed_hw[0] * self.pos_embed_hw[1], embed_dims))
        self.drop_after_pos = nn.Dropout(drop_rate)
        # stochastic depth rising linearly over all blocks (on the CPU: a model built on the
        # meta device still gets its rates)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        channels = embed_dims
        for i in range(num_stages):
            downsample = None
            if i < num_stages - 1:
                downsample = PatchMerging(channels, 2 * channels, strides[i + 1],
                                          norm_cfg if patch_norm else None)
            self.stages.append(SwinBlockSequence(
                channels, num_heads[i], mlp_ratio * channels, depths[i], window_size, qkv_bias,
                qk_scale, drop_rate, attn_drop_rate, rates[sum(depths[:i]):sum(depths[:i + 1])],
                downsample, act_cfg, norm_cfg, with_cp))
            channels = 2 * channels
        self.num_features = [embed_dims * 2 ** i for i in range(num_stages)]
        for i in self.out_indices:   # the output norms, after the stages: mmdetection's key order
            self.add_module(f'norm{i}', build_norm_layer(norm_cfg, self.num_features[i])[1])
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.patch_embed, self.drop_after_pos]
        for i in range(self.frozen_stages):
            frozen.append(self.stages[i])
            if i in self.out_indices:
                frozen.append(getattr(self, f'norm{i}'))
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False
        if self.use_abs_pos_embed:
            self.absolute_pos_embed.requires_grad = False

    def train(self, mode: bool = True) -> SwinTransformer:
        super().train(mode)
        self._freeze_stages()
        return self

    def init_weights(self) -> None:
        """A ``Pretrained`` init_cfg loads its checkpoint (``load_swin_checkpoint``); without
        one, mmdetection's init from scratch: Linear weights truncated normal (std 0.02) with
        zero bias, norms 1 and 0, the absolute position embedding truncated normal; the patch
        conv keeps PyTorch's init and the bias tables stay zero, as in mmdetection."""
        if self.init_cfg is not None:
            load_swin_checkpoint(self, self.init_cfg['checkpoint'], self.convert_weights)
        else:
            if self.use_abs_pos_embed:
                nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.LayerNorm):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
        self._is_init = True

    def _position_embedding(self, hw_shape: tuple[int, int]) -> Tensor:
        """(1, L, C): the absolute position embedding, resized bicubically to ``hw_shape``."""
        embed = self.absolute_pos_embed
        if tuple(hw_shape) == self.pos_embed_hw:
            return embed
        grid = embed.transpose(1, 2).reshape(1, -1, *self.pos_embed_hw)   # (1, C, h0, w0)
        grid = F.interpolate(grid, size=hw_shape, mode='bicubic', align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x, hw_shape = self.patch_embed(x)                                 # (B, L, C)
        if self.use_abs_pos_embed:
            x = x + self._position_embedding(hw_shape)
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x, hw_shape)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x)
                outs.append(out.view(-1, *hw_shape, self.num_features[i])
                            .permute(0, 3, 1, 2).contiguous())   # (B, H, W, C) -> (B, C, H, W)
            if stage.downsample is not None:
                x, hw_shape = stage.downsample(x, hw_shape)
        return tuple(outs)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

# The original PatchMerging concatenates the 2 x 2 neighbours offset-major in the order
# (dy, dx) = (0,0), (1,0), (0,1), (1,1); ``nn.Unfold`` puts offset 2 * dy + dx innermost. Unfold
# offset p holds the original's block MERGE_ORDER[p].
MERGE_ORDER = (0, 2, 1, 3)


def original_merging_to_unfold(tensor: Tensor, dim: int) -> Tensor:
    """Reorder the 4C merged channels along ``dim`` from the original PatchMerging's order to
    ``PatchMerging``'s (``downsample.reduction.weight``: dim 1; ``downsample.norm.*``: dim 0)."""
    C = tensor.shape[dim] // 4
    index = torch.tensor(MERGE_ORDER, device=tensor.device)
    blocks = tensor.unflatten(dim, (4, C)).index_select(dim, index)       # (.., 4, C, ..)
    return blocks.transpose(dim, dim + 1).flatten(dim, dim + 1)           # (.., C, 4, ..) -> 4C


_BLOCK = r'layers\.(\d+)\.blocks\.(\d+)\.'
_MMDET_BLOCK = r'stages.\1.blocks.\2.'
_WEIGHT_OR_BIAS = r'(weight|bias)'
# Each key of the original release's checkpoints: (pattern, mmdetection key or None = not used
# by a detection backbone, merged-channel dim to reorder or None).
ORIGINAL_KEY_MAP = (
    (r'head\.' + _WEIGHT_OR_BIAS, None, None),                            # ImageNet classifier
    (r'norm\.' + _WEIGHT_OR_BIAS, None, None),                            # the classifier's norm
    (_BLOCK + r'attn_mask', None, None),                                  # rebuilt per input size
    (r'patch_embed\.proj\.' + _WEIGHT_OR_BIAS, r'patch_embed.projection.\1', None),
    (r'patch_embed\.norm\.' + _WEIGHT_OR_BIAS, r'patch_embed.norm.\1', None),
    (r'absolute_pos_embed', 'absolute_pos_embed', None),
    (_BLOCK + r'(norm[12]\.(?:weight|bias))', _MMDET_BLOCK + r'\3', None),
    (_BLOCK + r'attn\.(relative_position_bias_table|relative_position_index|'
     r'(?:qkv|proj)\.(?:weight|bias))', _MMDET_BLOCK + r'attn.w_msa.\3', None),
    (_BLOCK + r'mlp\.fc1\.' + _WEIGHT_OR_BIAS, _MMDET_BLOCK + r'ffn.layers.0.0.\3', None),
    (_BLOCK + r'mlp\.fc2\.' + _WEIGHT_OR_BIAS, _MMDET_BLOCK + r'ffn.layers.1.\3', None),
    (r'layers\.(\d+)\.downsample\.reduction\.weight', r'stages.\1.downsample.reduction.weight',
     1),
    (r'layers\.(\d+)\.downsample\.norm\.' + _WEIGHT_OR_BIAS, r'stages.\1.downsample.norm.\2', 0),
)


def swin_original_to_mmdet(state_dict: Mapping[str, Tensor],
                           source: str = 'the state dict') -> OrderedDict[str, Tensor]:
    """A state dict of the original Swin release (microsoft/Swin-Transformer) in mmdetection's
    layout (that of ``SwinTransformer``), by ``ORIGINAL_KEY_MAP``: keys renamed, the
    PatchMerging weights' input channels reordered (``original_merging_to_unfold``), the
    classifier (``head.*``, ``norm.*``) and the ``attn_mask`` buffers dropped. The same
    conversion as mmdetection's ``swin_converter``, without its ``backbone.`` prefix.
    Raises KeyError naming ``source`` and the keys that are not of the original layout."""
    patterns = [(re.compile(p), target, dim) for p, target, dim in ORIGINAL_KEY_MAP]
    converted, unknown = OrderedDict(), []
    for key, value in state_dict.items():
        for pattern, target, dim in patterns:
            match = pattern.fullmatch(key)
            if match:
                break
        else:
            unknown.append(key)
            continue
        if target is not None:
            converted[match.expand(target)] = (value if dim is None
                                               else original_merging_to_unfold(value, dim))
    if unknown:
        hint = ''
        if any(k.startswith(('stages.', 'patch_embed.projection.')) for k in unknown):
            hint = ("; it looks like mmdetection's layout already: set "
                    'convert_weights=False')
        listed = ', '.join(unknown[:5]) + (f', ... ({len(unknown)} in all)'
                                           if len(unknown) > 5 else '')
        raise KeyError(f"{source}: keys not of the original Swin release's layout "
                       f'(convert_weights=True): {listed}{hint}')
    return converted


def resize_relative_position_bias_table(table: Tensor, num_rows: int) -> Tensor:
    """(S1 * S1, h) -> (S2 * S2, h), S2^2 = num_rows: the table of another window size,
    resized bicubically as a (h, S1, S1) image (mmdetection's interpolation)."""
    s1, s2 = math.isqrt(table.shape[0]), math.isqrt(num_rows)
    if s1 * s1 != table.shape[0] or s2 * s2 != num_rows:
        raise ValueError(f'relative_position_bias_table: {table.shape[0]} and {num_rows} rows '
                         'are not both squares (square windows only)')
    image = table.T.reshape(1, -1, s1, s1)                                 # (L, h) -> (1, h, S, S)
    resized = F.interpolate(image.float(), size=(s2, s2), mode='bicubic', align_corners=False)
    return resized.reshape(-1, num_rows).T.contiguous().to(table.dtype)   # (h, S2*S2) -> (L2, h)


def resolve_checkpoint_path(checkpoint: str, where: str = 'SwinTransformer.init_cfg') -> str:
    """A local path as it is; ``torchvision://NAME`` the cached torchvision file; an http(s) URL
    (mmdetection's Swin configs name the release files by URL) the file torch.hub and mmengine
    download it to, ``<torch.hub.get_dir()>/checkpoints/<file name>``. Nothing is downloaded:
    FileNotFoundError names the expected path when the file is not there."""
    if not checkpoint.startswith(('http://', 'https://')):
        return resolve_torchvision_checkpoint(checkpoint, where)
    expected = osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(urlparse(checkpoint).path))
    if not osp.isfile(expected):
        raise FileNotFoundError(
            f"{where}: checkpoint '{checkpoint}' is expected in the torch hub cache at\n"
            f'    {expected}\n'
            'which does not exist, and rcnn_det never downloads. Download the URL on a machine '
            'with internet access and copy the file there (or set TORCH_HOME to a directory '
            'whose hub/checkpoints/ holds it), or give the local path as the checkpoint.')
    return expected


def _backbone_state_dict(checkpoint: Mapping) -> dict[str, Tensor]:
    """The backbone's tensors of a checkpoint: mmengine's ``state_dict`` or the original
    release's ``model`` entry (or the dict itself), without DDP's ``module.``, and, for a
    detector's checkpoint, only the ``backbone.`` keys, without that prefix."""
    state_dict = checkpoint
    for entry in ('state_dict', 'model'):
        if isinstance(checkpoint.get(entry), Mapping):
            state_dict = checkpoint[entry]
            break
    if state_dict and all(key.startswith('module.') for key in state_dict):
        state_dict = {key[len('module.'):]: value for key, value in state_dict.items()}
    if any(key.startswith('backbone.') for key in state_dict):
        return {key[len('backbone.'):]: value for key, value in state_dict.items()
                if key.startswith('backbone.')}
    return dict(state_dict)


def _fit_to_model(model: SwinTransformer, state_dict: dict[str, Tensor],
                  filename: str) -> dict[str, Tensor]:
    """Adapt a state dict in mmdetection's layout to ``model`` where mmdetection does: bias
    tables of another window size are resized, ``relative_position_index`` buffers are the
    model's own (they follow from the window size), output norms the checkpoint lacks (an
    ImageNet checkpoint has none) keep their init, those the model lacks are dropped. Every
    other difference is left for the strict load to report."""
    own = model.state_dict()
    output_norm = re.compile(r'norm\d+\.(weight|bias)')
    fitted, kept, dropped = {}, [], []
    for key, value in state_dict.items():
        if key.endswith('relative_position_index') and key in own:
            continue
        if output_norm.fullmatch(key) and key not in own:
            dropped.append(key)
            continue
        if (key.endswith('relative_position_bias_table') and key in own
                and value.shape != own[key].shape and value.shape[1:] == own[key].shape[1:]):
            print_log(f'SwinTransformer: {key} of {filename} resized from {tuple(value.shape)} '
                      f'to {tuple(own[key].shape)} (another window size)', logger='current')
            value = resize_relative_position_bias_table(value, own[key].shape[0])
        if key == 'absolute_pos_embed' and value.dim() == 4 and key in own:
            value = value.flatten(2).transpose(1, 2)     # (1, C, H, W) -> (1, L, C)
        fitted[key] = value
    for key, value in own.items():
        if key not in fitted and (key.endswith('relative_position_index')
                                  or output_norm.fullmatch(key)):
            fitted[key] = value
            if not key.endswith('relative_position_index'):
                kept.append(key)
    if kept:
        print_log(f'SwinTransformer: {filename} has no {", ".join(kept)}: these output norms '
                  'keep their initial values', logger='current')
    if dropped:
        print_log(f'SwinTransformer: {", ".join(dropped)} of {filename} not used (output norms '
                  'of stages not in out_indices)', logger='current')
    return fitted


def load_swin_checkpoint(model: SwinTransformer, checkpoint: str,
                         convert_weights: bool = False) -> None:
    """Load a Swin checkpoint file into ``model``, strictly up to what mmdetection adapts.

    Accepts a bare state dict, an mmengine checkpoint (``state_dict``) or the original
    release's (``model``); a detector's checkpoint gives its ``backbone.`` keys. With
    ``convert_weights`` the keys are the original release's (``swin_original_to_mmdet``);
    without, mmdetection's. Then ``_fit_to_model`` adapts window sizes and output norms, and
    every other key and shape must fit: errors name the file, the keys and the shapes, and
    leave the model unchanged.
    """
    # rcnn_det.engine pulls in mmengine's runner: imported only when a checkpoint is read.
    from rcnn_det.engine.checkpoint import load_checkpoint_file, load_state_dict_strict

    filename = resolve_checkpoint_path(str(checkpoint))
    state_dict = _backbone_state_dict(load_checkpoint_file(filename))
    if convert_weights:
        state_dict = swin_original_to_mmdet(state_dict, f'checkpoint {filename}')
    elif any(key.startswith(('layers.', 'patch_embed.proj.')) for key in state_dict):
        raise KeyError(f"checkpoint {filename} is in the original Swin release's layout "
                       "(layers.*, patch_embed.proj.*): set convert_weights=True to convert it")
    state_dict = _fit_to_model(model, state_dict, filename)
    load_state_dict_strict(model, state_dict, filename)
    print_log(f'SwinTransformer: loaded {filename}', logger='current')
