"""DINO's contrastive denoising (CDN) queries (Zhang et al., 2022), mmdetection 3.x's
``CdnQueryGenerator`` (``mmdet/models/layers/transformer/dino_layers.py``): arguments, parameter
name (``label_embedding``), query layout, attention mask, ``dn_meta`` keys and the order of its
random draws, so that a seeded run gives the same queries as mmdetection on the same device.

During training every ground-truth box of the batch becomes 2 * G extra decoder queries: in each of
G groups one positive (a slightly moved box, the decoder must reconstruct the ground truth) and one
negative (a box moved further, the decoder must call it background). Their content part is the
embedding of the label, randomly flipped to another class now and then; their position part is
inverse_sigmoid of the noisy normalised (cx, cy, w, h) box.

Shape letters: B images, N_i ground-truth boxes of image i, T = sum N_i, M = max N_i, G groups,
D = 2 * G * M denoising queries per image, Q matching queries, E = ``embed_dims``, C classes.
Boxes are normalised by each image's own ``img_shape``.

Query layout of one image (its own targets first, zeros up to M, in every part):

    [ pos 0 (M) | neg 0 (M) | pos 1 (M) | neg 1 (M) | ... | neg G-1 (M) ]   then Q matching queries
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from torch import Tensor

from rcnn_det.structures import SampleList, bbox_xyxy_to_cxcywh

from ..recipes import RecipeReader
from .deformable_transformer import inverse_sigmoid

# mmdetection's default when dynamic groups are asked for without a query budget.
DEFAULT_NUM_DN_QUERIES = 100
# inverse_sigmoid's eps for the denoising boxes, as in mmdetection and the official DINO.
BOX_QUERY_EPS = 1e-3
OFFICIAL_TYPES = ('CdnQueryGenerator', 'DnQueryGenerator')


class DenoisingQueries(NamedTuple):
    """What the generator returns; unpacks like mmdetection's 4-tuple."""
    dn_label_query: Tensor   # (B, D, E) label embeddings; zeros at padding slots
    dn_bbox_query: Tensor    # (B, D, 4) inverse_sigmoid of noisy (cx, cy, w, h); zeros at padding
    attn_mask: Tensor        # (D + Q, D + Q) bool, True = the row query may not attend the column
    dn_meta: dict[str, int]  # num_denoising_queries (D), num_denoising_groups (G)


class CdnQueryGenerator(BaseModule):
    """forward(batch_data_samples) -> DenoisingQueries (see the module docstring).

    Args:
        num_classes: C; the label embedding has C rows (no "unknown" row, as in mmdetection).
        embed_dims: E.
        num_matching_queries: Q, the decoder's ordinary queries that follow the denoising ones.
        label_noise_scale: each denoising label is redrawn uniformly from the C classes (possibly
            its own) with probability ``label_noise_scale * 0.5``.
        box_noise_scale: each corner coordinate moves by u * ``box_noise_scale`` * (box side / 2),
            u uniform in (-1, 1) for positives and in (-2, -1] U [1, 2) for negatives.
        group_cfg: ``dynamic`` (default True) with ``num_dn_queries`` (default 100):
            G = num_dn_queries // M, at least 1; or ``dynamic=False`` with ``num_groups``: G fixed
            (at least 1). The other key may be present (Co-DINO writes ``num_groups=None``).

    Unlike mmdetection (which asserts both scales > 0), a scale of 0 means no noise of that kind
    and skips its random draws, as in the official DINO and Co-DETR code.
    """

    def __init__(self, num_classes: int, embed_dims: int, num_matching_queries: int,
                 label_noise_scale: float = 0.5, box_noise_scale: float = 1.0,
                 group_cfg: dict | None = None) -> None:
        super().__init__()
        for name, value in (('label_noise_scale', label_noise_scale),
                            ('box_noise_scale', box_noise_scale)):
            if value < 0:
                raise ValueError(f'CdnQueryGenerator: {name} must be >= 0, got {value}')
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.num_matching_queries = num_matching_queries
        self.label_noise_scale = label_noise_scale
        self.box_noise_scale = box_noise_scale
        self.dynamic_dn_groups, self.num_dn_queries, self.num_groups = read_group_cfg(group_cfg)
        self.label_embedding = nn.Embedding(num_classes, embed_dims)

    def get_num_groups(self, max_num_target: int) -> int:
        """G for a batch whose fullest image holds ``max_num_target`` boxes (mmdet's rule)."""
        if not self.dynamic_dn_groups:
            return max(int(self.num_groups), 1)
        if max_num_target == 0:
            return 1
        return max(self.num_dn_queries // max_num_target, 1)

    def forward(self, batch_data_samples: SampleList) -> DenoisingQueries:
        """Denoising queries from each sample's ``gt_instances`` (``bboxes`` (N_i, 4) xyxy pixels of
        the network input, ``labels`` (N_i,) in [0, C)), boxes divided by the sample's
        ``img_shape`` (the un-padded image, not ``batch_input_shape``), as mmdetection does."""
        boxes, labels = [], []
        for sample in batch_data_samples:
            img_h, img_w = sample.metainfo['img_shape'][:2]
            gt = sample.gt_instances
            boxes.append(gt.bboxes / gt.bboxes.new_tensor([img_w, img_h, img_w, img_h]))
            labels.append(gt.labels)
        return self.generate(boxes, labels)

    def generate(self, gt_bboxes_list: list[Tensor],
                 gt_labels_list: list[Tensor]) -> DenoisingQueries:
        """The same from tensors: per image (N_i, 4) normalised xyxy boxes and (N_i,) labels."""
        counts = [len(labels) for labels in gt_labels_list]
        max_num_target = max(counts, default=0)
        num_groups = self.get_num_groups(max_num_target)
        labels = torch.cat(gt_labels_list)                                 # (T,)
        boxes = torch.cat(gt_bboxes_list)                                  # (T, 4)
        # mmdetection draws the label noise before the box noise; keep the order for parity.
        label_query = self.label_embedding(noisy_dn_labels(
            labels, num_groups, self.num_classes, self.label_noise_scale))  # (2G * T, E)
        noisy_boxes = noisy_dn_boxes(boxes, num_groups, self.box_noise_scale)
        bbox_query = inverse_sigmoid(bbox_xyxy_to_cxcywh(noisy_boxes), eps=BOX_QUERY_EPS)
        batch_idx, slots = dn_query_slots(counts, num_groups, label_query.device)
        num_dn = 2 * num_groups * max_num_target
        dn_label_query = label_query.new_zeros(len(counts), num_dn, self.embed_dims)
        dn_label_query[batch_idx, slots] = label_query
        dn_bbox_query = label_query.new_zeros(len(counts), num_dn, 4)
        dn_bbox_query[batch_idx, slots] = bbox_query.to(label_query.dtype)
        attn_mask = dn_attn_mask(max_num_target, num_groups, self.num_matching_queries,
                                 label_query.device)
        dn_meta = dict(num_denoising_queries=num_dn, num_denoising_groups=num_groups)
        return DenoisingQueries(dn_label_query, dn_bbox_query, attn_mask, dn_meta)

    def extra_repr(self) -> str:
        groups = (f'num_dn_queries={self.num_dn_queries}' if self.dynamic_dn_groups
                  else f'num_groups={self.num_groups}')
        return (f'num_matching_queries={self.num_matching_queries}, '
                f'label_noise_scale={self.label_noise_scale}, '
                f'box_noise_scale={self.box_noise_scale}, dynamic={self.dynamic_dn_groups}, '
                f'{groups}')


def read_group_cfg(group_cfg: dict | None) -> tuple[bool, int | None, int | None]:
    """mmdetection's ``group_cfg`` -> (dynamic, num_dn_queries, num_groups); unknown keys raise."""
    cfg = RecipeReader(group_cfg, where='CdnQueryGenerator.group_cfg')
    dynamic = bool(cfg.pop('dynamic', True))
    num_dn_queries = cfg.pop('num_dn_queries', None)
    num_groups = cfg.pop('num_groups', None)
    cfg.reject_rest()
    if dynamic:
        if num_dn_queries is None:
            warnings.warn("CdnQueryGenerator: group_cfg has dynamic=True but no 'num_dn_queries'; "
                          f'using {DEFAULT_NUM_DN_QUERIES}')
            num_dn_queries = DEFAULT_NUM_DN_QUERIES
        required, value = 'num_dn_queries', num_dn_queries
    else:
        if num_groups is None:
            raise KeyError("CdnQueryGenerator.group_cfg: dynamic=False needs 'num_groups'")
        required, value = 'num_groups', num_groups
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f'CdnQueryGenerator.group_cfg: {required} must be an int, got '
                        f'{value!r} ({type(value).__name__})')
    return dynamic, num_dn_queries, num_groups


def noisy_dn_labels(labels: Tensor, num_groups: int, num_classes: int,
                    label_noise_scale: float) -> Tensor:
    """(T,) labels -> (2G * T,) labels of the queries, ordered (group, pos/neg, target).

    Each is replaced, with probability ``label_noise_scale * 0.5``, by a class drawn uniformly
    from all C (so the label changes with probability scale * 0.5 * (C - 1) / C).
    """
    labels = labels.repeat(2 * num_groups)
    if label_noise_scale == 0:
        return labels
    flip = torch.rand(labels.shape, dtype=torch.float32, device=labels.device) \
        < label_noise_scale * 0.5
    # One draw per flipped position, in position order: mmdetection's stream of random numbers.
    new_labels = torch.randint(0, num_classes, (int(flip.sum()),), dtype=torch.long,
                               device=labels.device)
    return labels.masked_scatter(flip, new_labels.to(labels.dtype))


def noisy_dn_boxes(boxes: Tensor, num_groups: int, box_noise_scale: float) -> Tensor:
    """(T, 4) normalised xyxy -> (2G * T, 4) noisy normalised xyxy clipped to [0, 1], ordered
    (group, pos/neg, target).

    Every coordinate moves independently by sign * u * ``box_noise_scale`` * (side / 2), side the
    box's width for x and height for y; u in [0, 1) for positives, [1, 2) for negatives.
    """
    expanded = boxes.repeat(2 * num_groups, 1)                           # (2G * T, 4)
    if box_noise_scale == 0:
        return expanded.clamp(min=0.0, max=1.0)
    # mmdetection draws the signs as float32 whatever the box dtype: kept for parity.
    sign = torch.randint_like(expanded, 0, 2, dtype=torch.float32) * 2.0 - 1.0
    magnitude = torch.rand_like(expanded)
    magnitude.view(num_groups, 2, -1, 4)[:, 1] += 1.0                    # negatives: [1, 2)
    half_sides = (expanded[:, 2:] - expanded[:, :2]).repeat(1, 2)        # (w, h, w, h)
    noisy = expanded + magnitude * sign * half_sides * box_noise_scale / 2
    return noisy.clamp(min=0.0, max=1.0)


def dn_query_slots(counts: list[int], num_groups: int,
                   device: torch.device) -> tuple[Tensor, Tensor]:
    """Where each of the 2G * T generated queries lands in the (B, D) batch: (image, slot).

    Target k of image b (k < counts[b]) sits at slot j * M + k of part j (j = 2g positives,
    2g + 1 negatives of group g); slots k >= counts[b] of each part stay padding.
    """
    counts_t = torch.tensor(counts, dtype=torch.long, device=device)     # (B,)
    max_num_target = max(counts, default=0)
    batch_idx = torch.repeat_interleave(torch.arange(len(counts), device=device), counts_t,
                                        output_size=sum(counts))                 # (T,)
    first = counts_t.cumsum(0) - counts_t                                # (B,) first target
    local = torch.arange(len(batch_idx), device=device) - first[batch_idx]  # (T,) k
    part = torch.arange(2 * num_groups, device=device)[:, None]          # (2G, 1)
    slots = (part * max_num_target + local[None]).flatten()              # (2G * T,)
    return batch_idx.repeat(2 * num_groups), slots


def dn_attn_mask(max_num_target: int, num_groups: int, num_matching_queries: int,
                 device: torch.device | str) -> Tensor:
    """(D + Q, D + Q) bool, True = masked: a denoising query sees only its own group (its
    positives and negatives) and the matching queries; a matching query sees only the matching
    queries. D = 2 * G * M."""
    num_dn = 2 * num_groups * max_num_target
    index = torch.arange(num_dn + num_matching_queries, device=device)
    is_dn = index < num_dn
    # Group of each query; the matching queries form group G, which no column of D belongs to.
    group = torch.where(is_dn, index // max(2 * max_num_target, 1), num_groups)
    return (group[:, None] != group[None, :]) & is_dn[None, :]


def build_dn_generator(dn_cfg: dict | None, *, num_classes: int, embed_dims: int,
                       num_matching_queries: int,
                       where: str = 'dn_cfg') -> CdnQueryGenerator | None:
    """A head's or detector's ``dn_cfg`` -> CdnQueryGenerator (None for None).

    Accepts both forms that Co-DINO configs write:
    - mmdetection 3.x (DINO, projects/CO-DETR): ``label_noise_scale``, ``box_noise_scale``,
      ``group_cfg``;
    - official Co-DETR (mmdet 2.x, ``projects/models/query_denoising.py``): ``type`` in
      ('CdnQueryGenerator', 'DnQueryGenerator', the same algorithm), ``noise_scale=dict(label,
      box)`` (default label 0.5, box 0.4) and ``group_cfg``, where ``dynamic`` defaults to False.
    The model sizes come from the caller; a cfg may repeat them (mmdet heads write them into
    the dict they are given; official names ``num_queries``, ``hidden_dim``) but not contradict.
    """
    if dn_cfg is None:
        return None
    cfg = RecipeReader(dn_cfg, where=where)
    sizes = dict(num_classes=num_classes, embed_dims=embed_dims,
                 num_matching_queries=num_matching_queries)
    for key, official_key in (('num_classes', None), ('embed_dims', 'hidden_dim'),
                              ('num_matching_queries', 'num_queries')):
        for name in filter(None, (key, official_key)):
            value = cfg.pop(name, sizes[key])
            if value != sizes[key]:
                raise ValueError(f'{where}: {name}={value!r} contradicts the model, which sets '
                                 f'{key}={sizes[key]!r}; leave it out of the config')
    official = 'type' in dn_cfg or 'noise_scale' in dn_cfg
    if not official:
        kwargs = dict(label_noise_scale=cfg.pop('label_noise_scale', 0.5),
                      box_noise_scale=cfg.pop('box_noise_scale', 1.0),
                      group_cfg=cfg.pop('group_cfg', None))
        cfg.reject_rest()
        return CdnQueryGenerator(**sizes, **kwargs)
    type_name = cfg.pop('type', OFFICIAL_TYPES[0])
    if type_name not in OFFICIAL_TYPES:
        raise ValueError(f'{where}: type must be one of {OFFICIAL_TYPES}, got {type_name!r}')
    noise = RecipeReader(cfg.pop('noise_scale', dict(label=0.5, box=0.4)),
                         where=f'{where}.noise_scale')
    label_noise_scale, box_noise_scale = noise.pop('label'), noise.pop('box')
    noise.reject_rest()
    group_cfg = cfg.pop('group_cfg', None)
    cfg.reject_rest()
    if group_cfg is None:
        raise KeyError(f"{where}: the official form needs 'group_cfg' with num_dn_queries "
                       "(dynamic=True) or num_groups")
    group_cfg = dict(dict(dynamic=False), **group_cfg)
    required = 'num_dn_queries' if group_cfg['dynamic'] else 'num_groups'
    if not isinstance(group_cfg.get(required), int) or group_cfg[required] < 1:
        raise ValueError(f'{where}.group_cfg: {required} must be an int >= 1 (official Co-DETR), '
                         f'got {group_cfg.get(required)!r}')
    return CdnQueryGenerator(**sizes, label_noise_scale=label_noise_scale,
                             box_noise_scale=box_noise_scale, group_cfg=group_cfg)
