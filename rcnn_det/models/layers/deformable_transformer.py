"""The deformable transformer of Deformable DETR (Zhu et al., 2021): encoder over the flattened
multi-level features, optional two-stage proposals from the encoder memory, and a decoder with
iterative box refinement. Official (mmdet 2.x / Co-DETR) module names, so that their
checkpoints load unchanged: ``level_embeds``, ``encoder.layers.*``, ``decoder.layers.*``,
``enc_output``, ``enc_output_norm``, ``pos_trans``, ``pos_trans_norm`` (two-stage) or
``reference_points`` (one-stage).

Shape letters: B images, L levels, H_l x W_l a level, N = sum H_l * W_l tokens, Q queries,
C = ``embed_dims``, K decoder layers. Everything is batch-first here; the layers are built
batch-first whatever their config says (mmcv 1.x's seq-first layout gives the same numbers).
Boxes are normalised (cx, cy, w, h) of each image's valid extent, as in DETR.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from torch import Tensor

from rcnn_det.registry import MODELS

from .ms_deform_attn import MultiScaleDeformableAttention


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 - x)) of x clamped to [0, 1], each side at least ``eps`` (mmdet's)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def valid_ratios(mask: Tensor) -> Tensor:
    """(B, H, W) padding mask (True = padding) -> (B, 2): the valid (width, height) fractions,
    read from the first row and the first column."""
    _, height, width = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float()
    valid_w = (~mask[:, 0, :]).sum(1).float()
    return torch.stack([valid_w / width, valid_h / height], -1)


def encoder_reference_points(spatial_shapes: list[tuple[int, int]], ratios: Tensor) -> Tensor:
    """Each token's pixel centre, normalised by its image's valid extent, then expressed in
    every level's padded frame.

    ratios: (B, L, 2) valid (w, h) fractions. Returns (B, N, L, 2) (x, y).
    """
    points = []
    for level, (height, width) in enumerate(spatial_shapes):
        ys, xs = torch.meshgrid(
            torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=ratios.device),
            torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=ratios.device),
            indexing='ij')
        x = xs.reshape(1, -1) / (ratios[:, None, level, 0] * width)       # (B, H_l * W_l)
        y = ys.reshape(1, -1) / (ratios[:, None, level, 1] * height)
        points.append(torch.stack([x, y], -1))
    return torch.cat(points, 1)[:, :, None] * ratios[:, None]


def proposal_pos_embed(proposals: Tensor, num_feats: int = 128,
                       temperature: int = 10000) -> Tensor:
    """(B, Q, 4) unactivated boxes -> (B, Q, 4 * num_feats): sine embedding of
    sigmoid(box) * 2 pi per coordinate (cx, cy, w, h), sin/cos interleaved per frequency."""
    k = torch.arange(num_feats, dtype=torch.float32, device=proposals.device)
    freqs = temperature ** (2 * (k // 2) / num_feats)
    angles = proposals.sigmoid()[..., None] * (2 * math.pi) / freqs       # (B, Q, 4, F)
    return torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], -1).flatten(2)


@dataclass
class EncodedLevels:
    """The flattened levels as the decoder sees them."""
    memory: Tensor                    # (B, N, C) encoder output (or the raw tokens)
    padding: Tensor                   # (B, N) True on padding
    shapes: list[tuple[int, int]]     # L (H_l, W_l)
    spatial_shapes: Tensor            # (L, 2) long
    level_start_index: Tensor         # (L,) long
    ratios: Tensor                    # (B, L, 2) valid (w, h) fractions

    def maps(self) -> list[Tensor]:
        """The memory back as L maps (B, C, H_l, W_l)."""
        chunks = self.memory.split([h * w for h, w in self.shapes], 1)
        return [c.transpose(1, 2).reshape(c.shape[0], -1, h, w)
                for c, (h, w) in zip(chunks, self.shapes)]


def encoder_output_proposals(memory: Tensor, padding: Tensor,
                             spatial_shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """Two-stage proposals: one box per encoder token, centred on its cell (normalised by its
    image's valid extent), w = h = 0.05 * 2^level.

    memory (B, N, C), padding (B, N) True on padding -> (memory with padded and invalid tokens
    zeroed (B, N, C); proposals (B, N, 4) in logit space, +inf where padded or invalid (any
    coordinate outside (0.01, 0.99)))."""
    proposals, start = [], 0
    for level, (height, width) in enumerate(spatial_shapes):
        pad = padding[:, start:start + height * width].view(-1, height, width)
        valid = torch.stack([(~pad[:, 0, :]).sum(1), (~pad[:, :, 0]).sum(1)], -1)  # (w, h)
        ys, xs = torch.meshgrid(
            torch.linspace(0, height - 1, height, dtype=torch.float32, device=memory.device),
            torch.linspace(0, width - 1, width, dtype=torch.float32, device=memory.device),
            indexing='ij')
        centres = (torch.stack([xs, ys], -1)[None] + 0.5) / valid[:, None, None].float()
        sizes = torch.full_like(centres, 0.05 * 2.0 ** level)
        proposals.append(torch.cat([centres, sizes], -1).flatten(1, 2))
        start += height * width
    proposals = torch.cat(proposals, 1)                                     # (B, N, 4)
    usable = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(padding[..., None], float('inf'))
    proposals = proposals.masked_fill(~usable, float('inf'))
    memory = memory.masked_fill(padding[..., None], 0).masked_fill(~usable, 0)
    return memory, proposals


def encode_levels(encoder: nn.Module, level_embeds: Tensor, mlvl_feats: list[Tensor],
                  mlvl_masks: list[Tensor], mlvl_pos_embeds: list[Tensor] | None
                  ) -> EncodedLevels:
    """Flatten the levels (L maps (B, C, H_l, W_l), padding masks (B, H_l, W_l)) and, with
    position embeddings, run ``encoder`` over them (positions + ``level_embeds[l]`` (L, C));
    without, the flattened features themselves are the memory."""
    shapes = [tuple(feat.shape[-2:]) for feat in mlvl_feats]
    tokens = torch.cat([feat.flatten(2).transpose(1, 2) for feat in mlvl_feats], 1)
    padding = torch.cat([mask.flatten(1) for mask in mlvl_masks], 1)
    if torch.jit.is_tracing():   # exporting: the sizes of the graph's own maps
        spatial_shapes = torch.stack([torch._shape_as_tensor(f)[-2:] for f in mlvl_feats])
        spatial_shapes = spatial_shapes.to(tokens.device)
    else:
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=tokens.device)
    level_start_index = torch.cat([spatial_shapes.new_zeros(1),
                                   spatial_shapes.prod(1).cumsum(0)[:-1]])
    ratios = torch.stack([valid_ratios(m) for m in mlvl_masks], 1)           # (B, L, 2)
    memory = tokens
    if mlvl_pos_embeds is not None:
        positions = torch.cat([pos.flatten(2).transpose(1, 2) + level_embeds[level]
                               for level, pos in enumerate(mlvl_pos_embeds)], 1)
        memory = encoder(
            tokens, query_pos=positions, query_key_padding_mask=padding,
            spatial_shapes=spatial_shapes, level_start_index=level_start_index,
            valid_ratios=ratios, reference_points=encoder_reference_points(shapes, ratios))
    return EncodedLevels(memory, padding, shapes, spatial_shapes, level_start_index, ratios)


def xavier_then_deformable_init(*modules: nn.Module) -> None:
    """mmdetection's transformer init: Xavier-uniform on every matrix of ``modules``, then each
    deformable attention's own init (which redraws its projections and offsets)."""
    for module in modules:
        for p in module.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
    for module in modules:
        for m in module.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.init_weights()


def batch_first_layers(layer_sequence_cfg: dict) -> dict:
    cfg = copy.deepcopy(dict(layer_sequence_cfg))
    cfg['transformerlayers'] = dict(cfg['transformerlayers'], batch_first=True)
    return cfg


@MODELS.register_module()
class DeformableDetrTransformerDecoder(BaseModule):
    """mmdet 2.x's decoder: ``num_layers`` layers; with ``reg_branches`` each layer refines the
    reference boxes: new = sigmoid(reg_branches[k](query) + inverse_sigmoid(ref)), and the
    next layer starts from new.detach().

    forward(query (B, Q, C), value (B, N, C), reference_points (B, Q, 2 or 4), valid_ratios
            (B, L, 2), reg_branches=None, **kwargs) ->
        (K, B, Q, C) queries and (K, B, Q, 2 or 4) references with ``return_intermediate``,
        else the last of each. With ``look_forward_twice`` (Co-DETR, DINO) the stored reference
        of layer k is the NON-detached refinement, so layer k + 1's box loss also trains
        reg_branches[k].
    """

    def __init__(self, transformerlayers: dict, num_layers: int,
                 return_intermediate: bool = False, look_forward_twice: bool = False,
                 post_norm_cfg: dict | None = None, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if post_norm_cfg is not None:
            raise ValueError('DeformableDetrTransformerDecoder: post_norm_cfg must be None')
        self.layers = nn.ModuleList(MODELS.build(dict(transformerlayers, batch_first=True))
                                    for _ in range(num_layers))
        self.num_layers = num_layers
        self.embed_dims = self.layers[0].embed_dims
        self.return_intermediate = return_intermediate
        self.look_forward_twice = look_forward_twice

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None, *,
                reference_points: Tensor, valid_ratios: Tensor,
                reg_branches: nn.ModuleList | None = None, **kwargs) -> tuple[Tensor, Tensor]:
        queries, references = [], []
        for k, layer in enumerate(self.layers):
            scale = (torch.cat([valid_ratios, valid_ratios], -1)
                     if reference_points.shape[-1] == 4 else valid_ratios)
            query = layer(query, key, value, reference_points=reference_points[:, :, None]
                          * scale[:, None], **kwargs)
            stored = reference_points
            if reg_branches is not None:
                delta = reg_branches[k](query)
                if reference_points.shape[-1] == 4:
                    refined = (delta + inverse_sigmoid(reference_points)).sigmoid()
                else:
                    refined = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points),
                                         delta[..., 2:]], -1).sigmoid()
                reference_points = refined.detach()
                stored = refined if self.look_forward_twice else reference_points
            queries.append(query)
            references.append(stored)
        if self.return_intermediate:
            return torch.stack(queries), torch.stack(references)
        return query, reference_points


@MODELS.register_module()
class DeformableDetrTransformer(BaseModule):
    """Encoder, two-stage query selection or learned queries, refining decoder.

    forward(mlvl_feats: L maps (B, C, H_l, W_l), mlvl_masks: L (B, H_l, W_l) bool (True =
            padding), query_embed: (Q, 2C) learned (positional, content) queries (one-stage),
            (Q, C) learned content queries (two-stage with ``mixed_selection``, Co-DETR's),
            else None, mlvl_pos_embeds: L maps (B, C, H_l, W_l),
            reg_branches, cls_branches: the head's K (+1 when two-stage) branches)
        -> (queries (K, B, Q, C), init_reference (B, Q, 2 or 4), inter_references
            (K, B, Q, 2 or 4), enc_outputs_class (B, N, num_classes) or None,
            enc_outputs_coord_unact (B, N, 4) or None)
    Two-stage: branch K scores every encoder token as a proposal around its cell (w = h =
    0.05 * 2^level); the ``two_stage_num_proposals`` best by the class-0 logit become the
    queries' reference boxes (detached) and, through ``pos_trans``, their embeddings (with
    ``mixed_selection`` only their positional half; the content is learned).
    """

    def __init__(self, encoder: dict, decoder: dict, as_two_stage: bool = False,
                 num_feature_levels: int = 4, two_stage_num_proposals: int = 300,
                 mixed_selection: bool = False, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.encoder = MODELS.build(batch_first_layers(encoder))
        self.decoder = MODELS.build(copy.deepcopy(dict(decoder)))
        self.embed_dims = self.encoder.embed_dims
        self.as_two_stage = as_two_stage
        self.num_feature_levels = num_feature_levels
        self.two_stage_num_proposals = two_stage_num_proposals
        if mixed_selection and not as_two_stage:
            raise ValueError('DeformableDetrTransformer: mixed_selection needs as_two_stage')
        self.mixed_selection = mixed_selection
        c = self.embed_dims
        # N(0, 1) as init_weights sets it: a model used without init_weights (random-weight
        # inference, a fresh checkpoint) must not hold uninitialised memory
        self.level_embeds = nn.Parameter(torch.randn(num_feature_levels, c))
        if as_two_stage:
            self.enc_output = nn.Linear(c, c)
            self.enc_output_norm = nn.LayerNorm(c)
            self.pos_trans = nn.Linear(2 * c, 2 * c)
            self.pos_trans_norm = nn.LayerNorm(2 * c)
        else:
            self.reference_points = nn.Linear(c, 2)

    def init_weights(self) -> None:
        """mmdet's: Xavier-uniform on every matrix, then the deformable attentions' own init,
        (one-stage) a Xavier reference-point layer with zero bias, level embeddings ~ N(0, 1).
        Every parameter is set here, so no child's init_cfg runs."""
        xavier_then_deformable_init(self)
        if not self.as_two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight)
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embeds)
        self._is_init = True

    def encoder_proposals(self, memory: Tensor, padding: Tensor,
                          spatial_shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """``encoder_output_proposals`` with the memory through ``enc_output`` and its norm."""
        memory, proposals = encoder_output_proposals(memory, padding, spatial_shapes)
        return self.enc_output_norm(self.enc_output(memory)), proposals

    def encode(self, mlvl_feats: list[Tensor], mlvl_masks: list[Tensor],
               mlvl_pos_embeds: list[Tensor] | None) -> EncodedLevels:
        """Flatten the levels and, with position embeddings, run the encoder over them; without
        (Co-DETR's auxiliary passes), the flattened features themselves are the memory."""
        return encode_levels(self.encoder, self.level_embeds, mlvl_feats, mlvl_masks,
                             mlvl_pos_embeds)

    def select_queries(self, enc: EncodedLevels, query_embed: Tensor | None,
                       reg_branches: nn.ModuleList | None, cls_branches: nn.ModuleList | None
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """-> (query (B, Q, C), query_pos (B, Q, C), reference points (B, Q, 2 or 4),
        encoder class logits (B, N, classes), encoder boxes (B, N, 4) unactivated) — the last
        two only when two-stage."""
        batch = enc.memory.shape[0]
        if not self.as_two_stage:
            query_pos, query = query_embed.split(self.embed_dims, -1)
            query_pos = query_pos[None].expand(batch, -1, -1)
            query = query[None].expand(batch, -1, -1)
            return query, query_pos, self.reference_points(query_pos).sigmoid(), None, None
        if cls_branches is None:
            raise ValueError('DeformableDetrTransformer: as_two_stage needs cls_branches')
        out_memory, proposals = self.encoder_proposals(enc.memory, enc.padding, enc.shapes)
        enc_class = cls_branches[self.decoder.num_layers](out_memory)
        enc_coord_unact = reg_branches[self.decoder.num_layers](out_memory) + proposals
        k = min(self.two_stage_num_proposals, enc_class.shape[1])  # tiny inputs: all tokens
        top = enc_class[..., 0].topk(k, dim=1).indices
        top_unact = enc_coord_unact.gather(1, top[..., None].expand(-1, -1, 4)).detach()
        query_pos, query = self.pos_trans_norm(
            self.pos_trans(proposal_pos_embed(top_unact, self.embed_dims // 2))
        ).split(self.embed_dims, -1)
        if self.mixed_selection:  # content queries learned, positions from the proposals
            query = query_embed[None, :k].expand(batch, -1, -1)
        return query, query_pos, top_unact.sigmoid(), enc_class, enc_coord_unact

    def decode(self, enc: EncodedLevels, query: Tensor, query_pos: Tensor,
               reference_points: Tensor, reg_branches: nn.ModuleList | None,
               **kwargs) -> tuple[Tensor, Tensor]:
        """The decoder over ``enc``'s memory -> (queries (K, B, Q, C), references (K, B, Q, *))."""
        return self.decoder(
            query, None, enc.memory, query_pos=query_pos, key_padding_mask=enc.padding,
            reference_points=reference_points, spatial_shapes=enc.spatial_shapes,
            level_start_index=enc.level_start_index, valid_ratios=enc.ratios,
            reg_branches=reg_branches, **kwargs)

    def forward(self, mlvl_feats: list[Tensor], mlvl_masks: list[Tensor],
                query_embed: Tensor | None, mlvl_pos_embeds: list[Tensor],
                reg_branches: nn.ModuleList | None = None,
                cls_branches: nn.ModuleList | None = None, **kwargs):
        return self.forward_with_memory(mlvl_feats, mlvl_masks, query_embed, mlvl_pos_embeds,
                                        reg_branches, cls_branches, **kwargs)[:5]

    def forward_with_memory(self, mlvl_feats: list[Tensor], mlvl_masks: list[Tensor],
                            query_embed: Tensor | None, mlvl_pos_embeds: list[Tensor],
                            reg_branches: nn.ModuleList | None = None,
                            cls_branches: nn.ModuleList | None = None, **kwargs):
        """``forward``'s outputs and then the encoder's ``EncodedLevels``."""
        enc = self.encode(mlvl_feats, mlvl_masks, mlvl_pos_embeds)
        query, query_pos, reference_points, enc_class, enc_coord_unact = self.select_queries(
            enc, query_embed, reg_branches, cls_branches)
        queries, references = self.decode(enc, query, query_pos, reference_points,
                                          reg_branches, **kwargs)
        return queries, reference_points, references, enc_class, enc_coord_unact, enc
