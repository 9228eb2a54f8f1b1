"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021) in plain PyTorch.

Shape letters: B images, Q queries, N_v value tokens (all levels' H_l * W_l, concatenated in level
order, each level row-major), M heads, D = value channels per head, L levels, P sampling points
per head and level.

One implementation for Deformable DETR and Co-DETR. Names, arguments and numerics follow mmcv's
``mmcv/ops/multi_scale_deform_attn.py`` (``MultiScaleDeformableAttention`` and
``multi_scale_deformable_attn_pytorch``), so that its checkpoints load unchanged. mmcv's compiled
CUDA kernel is used when this mmcv has one and the tensors are on a GPU; otherwise (mmcv-lite, CPU)
the PyTorch function below computes the same thing.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor

from rcnn_det.registry import MODELS


def _level_shapes(spatial_shapes: Tensor | Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """(H_l, W_l) of each level as ints; while exporting, as 0-dim tensors of the graph (split
    sizes and reshapes then follow the input's size instead of the traced one)."""
    if isinstance(spatial_shapes, Tensor):
        if torch.jit.is_tracing():
            return [(h, w) for h, w in spatial_shapes]
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


def multi_scale_deformable_attn_pytorch(value: Tensor, spatial_shapes: Tensor,
                                        sampling_locations: Tensor,
                                        attention_weights: Tensor) -> Tensor:
    """Bilinear samples of each head's value maps, weighted and summed over levels and points.

    Args:
        value: (B, N_v, M, D) the L maps, flattened row-major and concatenated.
        spatial_shapes: (L, 2) int64 (H_l, W_l) of each level (a list of pairs works too).
        sampling_locations: (B, Q, M, L, P, 2) (x, y) normalised to the level's map: 0 and 1 are
            its outer pixel edges, (i + 0.5) / W_l the centre of column i. Points outside the map
            read zeros.
        attention_weights: (B, Q, M, L, P), usually a softmax over L * P.
    Returns:
        (B, Q, M * D), head h in channels [h * D, (h + 1) * D).

    The same maths as mmcv's CUDA kernel: ``grid_sample(bilinear, zeros, align_corners=False)``
    at ``2 * loc - 1`` per level, which in pixels is x = loc_x * W_l - 0.5, y = loc_y * H_l - 0.5
    interpolated between the four neighbouring pixel centres.
    """
    B, N_v, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    shapes = _level_shapes(spatial_shapes)
    if len(shapes) != L:
        raise ValueError(f'spatial_shapes has {len(shapes)} levels but sampling_locations '
                         f'{tuple(sampling_locations.shape)} has L = {L}')
    if sum(h * w for h, w in shapes) != N_v:
        raise ValueError(f'value has N_v = {N_v} tokens but spatial_shapes {shapes} sum to '
                         f'{sum(h * w for h, w in shapes)}')
    value_levels = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample's frame (align_corners=False): -1 and 1 are the outer edges of the border pixels.
    grids = (2 * sampling_locations - 1).to(value.dtype)
    grids = grids.permute(3, 0, 2, 1, 4, 5).reshape(L, B * M, Q, P, 2)  # level first, then B*M
    weights = attention_weights.to(value.dtype)
    weights = weights.permute(3, 0, 2, 1, 4).reshape(L, B * M, 1, Q, P)
    output = None
    for level, (h, w) in enumerate(shapes):
        value_l = value_levels[level].permute(0, 2, 3, 1)                  # (B, M, D, H_l*W_l)
        value_l = value_l.reshape(B * M, D, h, w)
        sampled = F.grid_sample(value_l, grids[level], mode='bilinear', padding_mode='zeros',
                                align_corners=False)                       # (B*M, D, Q, P)
        summed = (sampled * weights[level]).sum(-1)                        # (B*M, D, Q)
        output = summed if output is None else output + summed
    return output.view(B, M * D, Q).transpose(1, 2).contiguous()           # (B, Q, M*D)


def multi_scale_deformable_attn_gather(value: Tensor, spatial_shapes: Tensor,
                                       sampling_locations: Tensor,
                                       attention_weights: Tensor) -> Tensor:
    """``multi_scale_deformable_attn_pytorch``'s result, with the bilinear sampling written as
    four gathers from the flattened value tensor per level instead of ``grid_sample``.

    Same arguments and output. Each sample at pixel coordinates (x, y) = (loc_x * W_l - 0.5,
    loc_y * H_l - 0.5) reads its four neighbouring pixels, weighted by the bilinear weights
    and zero outside the map, as ``grid_sample(align_corners=False, padding_mode='zeros')``.
    An exported graph then holds ``Gather`` instead of ``GridSample`` (which some TensorRT
    versions get wrong: ``export_onnx(..., deform_attn='gather')``).
    """
    B, N_v, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    shapes = _level_shapes(spatial_shapes)
    flat = value.permute(0, 2, 1, 3).reshape(B * M, N_v, D)               # (B*M, N_v, D)
    locations = sampling_locations.permute(0, 2, 1, 3, 4, 5).reshape(B * M, Q, L, P, 2)
    weights = attention_weights.permute(0, 2, 1, 3, 4).reshape(B * M, Q, L, P).to(value.dtype)
    output = value.new_zeros(B * M, Q, D)
    start = 0
    for level, (h, w) in enumerate(shapes):
        x = locations[:, :, level, :, 0].to(value.dtype) * w - 0.5         # (B*M, Q, P)
        y = locations[:, :, level, :, 1].to(value.dtype) * h - 0.5
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        for dx, dy, bilinear in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                                 (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
            # clamp(min=...) then clamp(max=...): h and w are tensors while exporting
            index = (start + yi.clamp(min=0).clamp(max=h - 1) * w
                     + xi.clamp(min=0).clamp(max=w - 1)).long()
            picked = flat.gather(1, index.reshape(B * M, Q * P, 1).expand(-1, -1, D))
            coef = torch.where(inside, bilinear * weights[:, :, level], 0)   # (B*M, Q, P)
            output = output + (picked.view(B * M, Q, P, D) * coef[..., None]).sum(2)
        start = start + h * w
    return output.view(B, M, Q, D).permute(0, 2, 1, 3).reshape(B, Q, M * D)


SAMPLING_PATHS = {'grid_sample': multi_scale_deformable_attn_pytorch,
                  'gather': multi_scale_deformable_attn_gather}
_sampling_path = ['grid_sample']   # the path the module runs off the GPU kernel


@contextlib.contextmanager
def deform_attn_sampling(path: str):
    """Within the block, ``MultiScaleDeformableAttention`` samples with ``path`` ('grid_sample'
    or 'gather', see ``SAMPLING_PATHS``) where it would use the PyTorch function."""
    if path not in SAMPLING_PATHS:
        raise ValueError(f'deform_attn_sampling: path must be one of {sorted(SAMPLING_PATHS)}, '
                         f'got {path!r}')
    previous = _sampling_path[0]
    _sampling_path[0] = path
    try:
        yield
    finally:
        _sampling_path[0] = previous


@functools.lru_cache(maxsize=None)
def _mmcv_cuda_function():
    """mmcv's ``MultiScaleDeformableAttnFunction`` if this mmcv is compiled with ops, else None.

    Imported on first use on a GPU only, so CPU runs never touch mmcv.ops (absent in mmcv-lite).
    """
    try:
        kernel_module = importlib.import_module('mmcv.ops.multi_scale_deform_attn')
    except (ImportError, OSError):
        return None
    return getattr(kernel_module, 'MultiScaleDeformableAttnFunction', None)


@MODELS.register_module()
class MultiScaleDeformableAttention(BaseModule):
    """Each query reads P bilinear samples per head and level around its reference point.

    forward(query, value, reference_points, spatial_shapes, ...) -> same layout as ``query``
        query:            (Q, B, embed_dims), or (B, Q, embed_dims) with ``batch_first``
        value:            (N_v, B, embed_dims) likewise; defaults to ``query`` (encoder)
        identity:         added to the result; defaults to ``query`` WITHOUT ``query_pos``
        query_pos:        added to ``query`` only (never to ``value`` or ``identity``)
        key_padding_mask: (B, N_v) bool, True = padding: those projected values are zeroed
        reference_points: (B, Q, L, 2) normalised (x, y): loc = ref + offset / (W_l, H_l);
                          or (B, Q, L, 4) (cx, cy, w, h): loc = ref_xy + offset / P * ref_wh / 2
        spatial_shapes:   (L, 2) int64 (H_l, W_l);  level_start_index: (L,), CUDA kernel only
    ``key`` and other keyword arguments (``key_pos``, ``attn_mask``, ... passed by transformer
    layers) are accepted and ignored, as in mmcv. Output =
    dropout(output_proj(attention)) + identity.

    Children (checkpoint keys): ``sampling_offsets`` Linear(embed, M*L*P*2) in (M, L, P, xy)
    order, ``attention_weights`` Linear(embed, M*L*P) with a softmax over L*P per head,
    ``value_proj`` Linear(embed, embed * value_proj_ratio), ``output_proj``, ``dropout``.
    ``im2col_step`` only matters to mmcv's CUDA kernel. ``init_weights`` runs at construction and
    marks the module initialised, as mmcv does; ``init_cfg`` is stored but, as in mmcv, not
    applied (a parent's Xavier-on-all init still reaches these Linears).
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4, im2col_step: int = 64, dropout: float = 0.1,
                 batch_first: bool = False, norm_cfg: dict | None = None,
                 init_cfg: dict | list[dict] | None = None,
                 value_proj_ratio: float = 1.0) -> None:
        super().__init__(init_cfg=init_cfg)
        if embed_dims % num_heads != 0:
            raise ValueError(f'MultiScaleDeformableAttention: embed_dims ({embed_dims}) must be '
                             f'divisible by num_heads ({num_heads})')
        value_proj_size = int(embed_dims * value_proj_ratio)
        if value_proj_size % num_heads != 0:
            raise ValueError(f'MultiScaleDeformableAttention: embed_dims * value_proj_ratio '
                             f'({value_proj_size}) must be divisible by num_heads ({num_heads})')
        if norm_cfg is not None:
            raise ValueError('MultiScaleDeformableAttention: norm_cfg must be None (mmcv stores '
                             f'it and never uses it), got {norm_cfg!r}')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.im2col_step = im2col_step
        self.batch_first = batch_first
        self.norm_cfg = norm_cfg
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, value_proj_size)
        self.output_proj = nn.Linear(value_proj_size, embed_dims)
        self.dropout = nn.Dropout(dropout)
        self.init_weights()

    def init_weights(self) -> None:
        """mmcv's: offsets on rays around the reference, uniform attention, Xavier projections.

        Head h's P points lie along the direction of angle 2*pi*h/M, scaled so that its larger
        component is 1, at 1, 2, ..., P times that step (the same on every level); the offsets
        weight is zero, so at initialisation the pattern does not depend on the query.
        """
        M, L, P = self.num_heads, self.num_levels, self.num_points
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(M, dtype=torch.float32) * (2.0 * math.pi / M)
        directions = torch.stack([thetas.cos(), thetas.sin()], -1)         # (M, 2) (x, y)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        steps = torch.arange(1, P + 1, dtype=torch.float32)                 # point p -> p + 1
        grid = directions[:, None, None, :] * steps[None, None, :, None]   # (M, 1, P, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.expand(M, L, P, 2).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)
        self._is_init = True

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                identity: Tensor | None = None, query_pos: Tensor | None = None,
                key_padding_mask: Tensor | None = None, reference_points: Tensor | None = None,
                spatial_shapes: Tensor | None = None, level_start_index: Tensor | None = None,
                **kwargs) -> Tensor:
        if reference_points is None or spatial_shapes is None:
            raise ValueError('MultiScaleDeformableAttention needs reference_points and '
                             'spatial_shapes')
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query, value = query.transpose(0, 1), value.transpose(0, 1)  # (n, B, C) -> (B, n, C)
        B, Q, _ = query.shape
        N_v = value.shape[1]
        M, L, P = self.num_heads, self.num_levels, self.num_points
        spatial_shapes = torch.as_tensor(spatial_shapes, dtype=torch.long, device=query.device)
        if int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum()) != N_v:
            raise ValueError(f'MultiScaleDeformableAttention: value has {N_v} tokens but '
                             f'spatial_shapes {spatial_shapes.tolist()} cover '
                             f'{int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum())}')

        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None].bool(), 0.0)
        value = value.view(B, N_v, M, -1)                                  # (B, N_v, M, D)
        offsets = self.sampling_offsets(query).view(B, Q, M, L, P, 2)
        weights = self.attention_weights(query).view(B, Q, M, L * P).softmax(-1)
        weights = weights.view(B, Q, M, L, P)
        locations = self._sampling_locations(reference_points, offsets, spatial_shapes)

        function = _mmcv_cuda_function() if value.is_cuda else None
        if function is not None:
            if level_start_index is None:
                sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
                level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
            output = function.apply(value, spatial_shapes, level_start_index, locations, weights,
                                    self.im2col_step)
        else:
            output = SAMPLING_PATHS[_sampling_path[0]](value, spatial_shapes, locations, weights)
        output = self.output_proj(output)                                  # (B, Q, embed_dims)
        if not self.batch_first:
            output = output.transpose(0, 1)                                # (Q, B, embed_dims)
        return self.dropout(output) + identity

    def _sampling_locations(self, reference_points: Tensor, offsets: Tensor,
                            spatial_shapes: Tensor) -> Tensor:
        """(B, Q, L, 2|4) references, (B, Q, M, L, P, 2) offsets -> (B, Q, M, L, P, 2) locations."""
        if reference_points.dim() != 4 or reference_points.shape[-1] not in (2, 4):
            raise ValueError('MultiScaleDeformableAttention: reference_points must be '
                             '(bs, num_query, num_levels, 2) points or (..., 4) boxes '
                             f'(cx, cy, w, h), got shape {tuple(reference_points.shape)}')
        ref = reference_points[:, :, None, :, None, :]                     # (B, Q, 1, L, 1, 2|4)
        if reference_points.shape[-1] == 2:
            # Encoder: offsets are in pixels of each level.
            normalizer = spatial_shapes.flip(-1)                           # (L, 2) as (W_l, H_l)
            return ref + offsets / normalizer[None, None, None, :, None, :]
        # Decoder boxes: the P points of a head reach at most half the box size from its centre
        # at mmcv's initial offsets (|offset| <= P). Keep mmcv's operation order for parity.
        return ref[..., :2] + offsets / self.num_points * ref[..., 2:] * 0.5

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, '
                f'num_levels={self.num_levels}, num_points={self.num_points}, '
                f'batch_first={self.batch_first}')
