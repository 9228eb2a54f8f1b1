"""One post-processing path for every head, and the one conversion to the original image.

Heads decode their outputs into boxes of the network input (clipped to each image's
``img_shape`` by their box coder when its ``clip_border`` is set, as mmdetection's coders do)
and hand their scored candidates to ``select_detections``: size filter, batched NMS (or
soft-NMS, which re-scores instead of removing) over (image, group) pairs and the best
``max_per_img`` of each image, for a whole batch in one NMS call. The detector calls
``to_original_image`` once on its final results: boxes divided by the resize ``scale_factor``,
masks pasted into the original image (or both left in the network input's frame when
``rescale`` is False).

This is the only module of ``rcnn_det.models`` that runs NMS or reads ``scale_factor``.
Shape letters: B images, M candidates of the batch, N candidates of one image, D detections
of one image, S the RoI mask size, C classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from mmengine.structures import InstanceData
from torch import Tensor
from torchvision.ops import batched_nms

from rcnn_det.structures import meta_pairs, paste_masks

from .recipes import NMSConfig


@dataclass
class Candidates:
    """Scored candidate boxes of a batch, flat, in the network input's frame."""
    boxes: Tensor       # (M, 4) xyxy pixels
    scores: Tensor      # (M,)
    labels: Tensor      # (M,) class (0 for class-agnostic proposals)
    image_ids: Tensor   # (M,) the image of each candidate, 0..B-1
    groups: Tensor      # (M,) NMS runs inside each (image, group): the class, or the RPN's level
    num_groups: int     # groups per image (classes, or levels)


def size_scales(batch_img_metas: list[dict], device: torch.device) -> Tensor:
    """(B, 4) = (sx, sy, sx, sy): the resize factors from the original image to the input."""
    return meta_pairs(batch_img_metas, 'scale_factor', device).repeat(1, 2)


def at_most(k: int, x: Tensor, dim: int) -> int | Tensor:
    """min(k, x.shape[dim]), for ``topk``; a traced value while exporting, so that the graph
    takes the size of its own input."""
    if torch.jit.is_tracing():
        return torch.clamp(torch._shape_as_tensor(x)[dim], max=k)
    return min(k, x.shape[dim])


def filter_scores_and_topk(scores: Tensor, score_thr: float, topk: int
                           ) -> tuple[Tensor, Tensor, Tensor]:
    """(N, C) scores -> the (value, row, class) of the pairs above ``score_thr``, best first,
    at most ``topk`` of them (< 0: all): mmdetection's ``filter_scores_and_topk``."""
    keep = scores > score_thr
    values = scores[keep]
    index = keep.nonzero()                                                # (K, 2)
    values, order = values.sort(descending=True)
    if topk >= 0:
        values, order = values[:topk], order[:topk]
    index = index[order]
    return values, index[:, 0], index[:, 1]


def topk_pairs(scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(Q, C) scores -> the (value, row, class) of the ``k`` best pairs, best first: a
    DETR-style head's detections, where one query may appear with several classes."""
    values, index = scores.flatten().topk(min(k, scores.numel()))
    return values, index // scores.shape[1], index % scores.shape[1]


def select_detections(candidates: Candidates, num_images: int, nms: NMSConfig,
                      max_per_img: int, min_bbox_size: float = -1,
                      score_thr: float | None = None,
                      original_scales: Tensor | None = None) -> list[InstanceData]:
    """Per image, the best ``max_per_img`` candidates that survive NMS inside their group.

    Args:
        nms: mmdet's ``nms=dict(type='nms', iou_threshold=...)`` or ``dict(type='soft_nms',
            ...)``, read. Soft-NMS returns the decayed scores (``batched_soft_nms``).
        min_bbox_size: candidates with a side <= this are dropped first (< 0: none).
        score_thr: when given, candidates scoring <= it are dropped first (heads that
            threshold while choosing their candidates pass None).
        original_scales: (B, 4) ``size_scales``; given, sides are measured in the original
            image (the boxes divided by the resize factors), as mmdetection's dense heads do
            for final detections; otherwise in the network input.
    Returns:
        B x InstanceData(bboxes (D, 4), scores (D,), labels (D,)), best first, in the network
        input's frame.
    """
    boxes, scores = candidates.boxes, candidates.scores
    keep = torch.ones_like(scores, dtype=torch.bool)
    if score_thr is not None:
        keep = keep & (scores > score_thr)
    if min_bbox_size >= 0:
        measured = boxes if original_scales is None else boxes / original_scales[
            candidates.image_ids]
        keep = keep & ((measured[:, 2:] - measured[:, :2]) > min_bbox_size).all(1)
    boxes, scores = boxes[keep], scores[keep]
    labels, images, groups = (candidates.labels[keep], candidates.image_ids[keep],
                              candidates.groups[keep])
    if nms.type == 'soft_nms':
        kept, decayed = batched_soft_nms(boxes, scores, groups, images, nms.iou_threshold,
                                         nms.sigma, nms.min_score, nms.method)
        scores = scores.scatter(0, kept, decayed)      # each image's picks, best first
    else:
        kept = batched_nms(boxes, scores, images * candidates.num_groups + groups,
                           nms.iou_threshold)                             # best first
    results = []
    for i in range(num_images):
        mine = kept[images[kept] == i][:max_per_img]
        results.append(InstanceData(bboxes=boxes[mine], scores=scores[mine],
                                    labels=labels[mine]))
    return results


@torch.jit._script_if_tracing
def batched_soft_nms(boxes: Tensor, scores: Tensor, groups: Tensor, image_ids: Tensor,
                     iou_threshold: float = 0.3, sigma: float = 0.5, min_score: float = 1e-3,
                     method: str = 'linear') -> tuple[Tensor, Tensor]:
    """mmcv's ``batched_nms`` with ``nms=dict(type='soft_nms', ...)``, every image at once.

    Each image is one run of mmcv's CPU soft-NMS kernel (``softnms_cpu`` in
    ``mmcv/ops/csrc/pytorch/cpu/nms.cpp``, box offset 0) over its candidates in their given
    order. Boxes of different groups never decay each other: their IoU counts as 0, which is
    what mmcv's coordinate offsets give. Step i picks the best remaining box of every image,
    multiplies the scores of the rest of that image by a weight of their IoU with it
    (``NMSConfig`` lists the methods) and drops those now below ``min_score``. An image's first
    pick is kept whatever its score, as in the kernel. On a tie the kernel takes the box that
    comes first in its working order, which it shuffles as it goes (the pick is swapped to the
    front, a dropped box's slot is refilled from the back); that order is replayed here, so
    ties resolve as in mmcv.

    Args:
        boxes: (M, 4) xyxy; scores: (M,); groups: (M,) NMS runs inside each (image, group);
        image_ids: (M,) 0..B-1.
    Returns:
        keep (K,) indices of the kept candidates, image by image, each image's in pick order
        (best first: later decays only lower the scores), and their decayed scores (K,).

    Written in TorchScript's subset and out of place: while a model is exported to ONNX it is
    compiled (``_script_if_tracing``), so that its rounds become an ONNX ``Loop`` that runs as
    many times as the data needs.
    """
    boxes, scores, device = boxes.detach(), scores.detach(), scores.device
    num = scores.shape[0]
    if num == 0:
        return torch.zeros(0, dtype=torch.long, device=device), scores.new_zeros(0)
    # Padded layout: row b holds image b's candidates in their given order (slots), padding
    # points at the extra candidate ``num``: a zero box that is never alive.
    num_images = int(image_ids.max()) + 1
    image_range = torch.arange(num_images, device=device)
    counts = (image_ids[:, None] == image_range[None]).sum(0)               # (B,)
    # by image, in the given order inside each (unique keys: no sort stability needed)
    by_image = (image_ids * num + torch.arange(num, device=device)).argsort()   # (M,)
    rows = image_ids[by_image]
    cols = torch.arange(num, device=device) - (counts.cumsum(0) - counts)[rows]
    width = int(counts.max())
    slot_to_cand = torch.full((num_images, width), num, dtype=torch.long, device=device)
    slot_to_cand = slot_to_cand.index_put((rows, cols), by_image)            # (B, W)
    box = torch.cat([boxes, boxes.new_zeros(1, 4)])[slot_to_cand]            # (B, W, 4)
    area = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])         # (B, W)
    group = torch.cat([groups, groups.new_zeros(1)])[slot_to_cand]           # (B, W)
    score = torch.cat([scores, scores.new_zeros(1)])[slot_to_cand]           # (B, W) decayed
    alive = slot_to_cand < num            # (B, W) slots neither picked nor dropped yet
    position = torch.arange(width, device=device)
    order = position.repeat(num_images, 1)        # (B, W) the kernel's working order of slots
    end = counts.clone()                          # (B,) positions < end are still in play
    no = torch.zeros((num_images, 1), dtype=torch.bool, device=device)
    for i in range(width):
        active = end > i
        if not bool(active.any()):
            break
        # the first best of positions i..end-1 (all -inf in rows that ended: position i)
        ranked = score.gather(1, order[:, i:]).masked_fill(position[i:] >= end[:, None],
                                                           float('-inf'))
        best = ranked.argmax(1, keepdim=True) + i                             # (B, 1)
        pick = order.gather(1, best)                                          # (B, 1) slot
        order = order.scatter(1, best, order[:, i:i + 1])
        order = torch.cat([order[:, :i], pick, order[:, i + 1:]], 1)
        alive = alive.scatter(1, pick, no)
        # the kernel's IoU, in its order of operations
        picked = box.gather(1, pick[..., None].expand(-1, -1, 4))             # (B, 1, 4)
        wh = (torch.minimum(box[..., 2:], picked[..., 2:])
              - torch.maximum(box[..., :2], picked[..., :2])).clamp(min=0)   # (B, W, 2)
        inter = wh[..., 0] * wh[..., 1]
        iou = inter / (area.gather(1, pick) + area - inter)                   # (B, W)
        iou = torch.where(group == group.gather(1, pick), iou, torch.zeros_like(iou))
        ones = torch.ones_like(iou)
        if method == 'linear':
            weight = torch.where(iou >= iou_threshold, ones - iou, ones)
        elif method == 'naive':
            weight = torch.where(iou >= iou_threshold, torch.zeros_like(iou), ones)
        else:
            weight = torch.exp(-(iou * iou) / sigma)
        score = torch.where(alive, score * weight, score)
        dropped = alive & (score < min_score)
        if bool(dropped.any()):   # (an `if`, not `continue`, which the ONNX Loop mishandles)
            alive = alive & ~dropped
            # The kernel fills each dropped position, front to back, with the last survivor at
            # the back; so survivors before the new end stay, the holes among them take the
            # survivors behind it in reverse order.
            kept = alive.gather(1, order) & (position > i) & (position < end[:, None])
            new_end = torch.where(active, i + 1 + kept.sum(1), end)
            hole = ~kept & (position > i) & (position < new_end[:, None])
            donor = kept & (position >= new_end[:, None])
            hole_rank = hole.long().cumsum(1) - 1
            donor_rank = donor.long().flip([1]).cumsum(1).flip([1]) - 1
            filler = order.new_zeros(num_images, width + 1)      # column W collects non-donors
            filler = filler.scatter(1, torch.where(donor, donor_rank,
                                                   torch.full_like(donor_rank, width)), order)
            order = torch.where(hole, filler.gather(1, hole_rank.clamp(min=0)), order)
            end = new_end
    picks = position < end[:, None]              # (B, W) positions 0..end-1: picks, in order
    image = image_range[:, None].expand_as(order)[picks]
    slots = order[picks]
    return slot_to_cand[image, slots], score[image, slots]


@dataclass(frozen=True)
class MaskPaste:
    """How ``to_original_image`` turns each detection's S x S mask probabilities into a mask
    of the image (mmdet's ``test_cfg.rcnn.mask_thr_binary``; rcnn_det's ``mask_paste``)."""
    thr_binary: float = 0.5
    mode: str = 'mmdet'


def to_original_image(results_list: list[InstanceData], batch_img_metas: list[dict],
                      rescale: bool = True, mask_paste: MaskPaste | None = None
                      ) -> list[InstanceData]:
    """Head predictions in the network input's frame -> the frame the user asked for.

    ``rescale``: boxes divided by each image's ``scale_factor`` (``rescale_boxes``) and masks
    pasted into its ``ori_shape`` (mmdetection's ``rescale=True``); otherwise boxes left as
    they are and masks pasted into ``img_shape`` (``paste_mask_probs``).
    """
    if rescale:
        results_list = rescale_boxes(results_list, batch_img_metas)
    return paste_mask_probs(results_list, batch_img_metas,
                            'ori_shape' if rescale else 'img_shape', mask_paste)


def rescale_boxes(results_list: list[InstanceData], batch_img_metas: list[dict]
                  ) -> list[InstanceData]:
    """Boxes of the network input -> boxes of the original image: divided by each image's
    ``scale_factor`` (w, h); in place. An exported graph ends with this."""
    if not results_list:
        return results_list
    bboxes = results_list[0].bboxes
    factors = meta_pairs(batch_img_metas, 'scale_factor', bboxes.device, bboxes.dtype)
    for i, results in enumerate(results_list):
        results.bboxes = results.bboxes / factors[i].repeat(2)
    return results_list


def paste_mask_probs(results_list: list[InstanceData], batch_img_metas: list[dict],
                     frame: str, mask_paste: MaskPaste | None) -> list[InstanceData]:
    """Results with ``mask_probs`` (D, S, S), the probabilities of each detection's own class,
    get ``masks`` (D, H, W) bool of the image's ``frame`` (a metainfo key: ``ori_shape`` or
    ``img_shape``, matching the boxes) in their place; in place. Runs outside exported graphs
    (their masks stay S x S)."""
    for results, meta in zip(results_list, batch_img_metas):
        if 'mask_probs' in results:
            if mask_paste is None:
                raise ValueError('to_original_image: the results have mask_probs but no '
                                 'MaskPaste recipe was given')
            results.masks = paste_masks(results.mask_probs, results.bboxes, meta[frame][:2],
                                        mask_paste.thr_binary, mode=mask_paste.mode)
            del results.mask_probs
    return results_list
