"""One post-processing path for every head, and the one conversion to the original image.

Heads decode their outputs into boxes of the network input (clipped to each image's
``img_shape`` by their box coder when its ``clip_border`` is set, as mmdetection's coders do)
and hand their scored candidates to ``select_detections``: size filter, batched NMS over
(image, group) pairs and the best ``max_per_img`` of each image, for a whole batch in one NMS
call. The detector calls ``to_original_image`` once on its final results: boxes divided by the
resize ``scale_factor``, masks pasted into the original image (or both left in the network
input's frame when ``rescale`` is False).

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

from rcnn_det.structures import paste_masks

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
    return torch.tensor([list(m['scale_factor']) * 2 for m in batch_img_metas],
                        dtype=torch.float32, device=device)


def filter_scores_and_topk(scores: Tensor, score_thr: float, topk: int
                           ) -> tuple[Tensor, Tensor, Tensor]:
    """(N, C) scores -> the (value, row, class) of the pairs above ``score_thr``, best first,
    at most ``topk`` of them (< 0: all): mmdetection's ``filter_scores_and_topk``."""
    keep = scores > score_thr
    values = scores[keep]
    index = keep.nonzero()                                                # (K, 2)
    k = values.numel() if topk < 0 else min(topk, values.numel())
    values, order = values.sort(descending=True)
    index = index[order[:k]]
    return values[:k], index[:, 0], index[:, 1]


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
        nms: mmdet's ``nms=dict(type='nms', iou_threshold=...)``, read.
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
        keep &= scores > score_thr
    if min_bbox_size >= 0:
        measured = boxes if original_scales is None else boxes / original_scales[
            candidates.image_ids]
        keep &= ((measured[:, 2:] - measured[:, :2]) > min_bbox_size).all(1)
    boxes, scores = boxes[keep], scores[keep]
    labels, images = candidates.labels[keep], candidates.image_ids[keep]
    kept = batched_nms(boxes, scores, images * candidates.num_groups + candidates.groups[keep],
                       nms.iou_threshold)                                 # best first
    results = []
    for i in range(num_images):
        mine = kept[images[kept] == i][:max_per_img]
        results.append(InstanceData(bboxes=boxes[mine], scores=scores[mine],
                                    labels=labels[mine]))
    return results


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

    ``rescale``: boxes divided by each image's ``scale_factor`` and masks pasted into its
    ``ori_shape`` (mmdetection's ``rescale=True``); otherwise boxes left as they are and masks
    pasted into ``img_shape``. Results with ``mask_probs`` (D, S, S), the probabilities of
    each detection's own class, get ``masks`` (D, H, W) bool in their place.
    """
    for results, meta in zip(results_list, batch_img_metas):
        if rescale:
            factors = results.bboxes.new_tensor(meta['scale_factor']).repeat(2)   # (4,)
            results.bboxes = results.bboxes / factors
        if 'mask_probs' in results:
            if mask_paste is None:
                raise ValueError('to_original_image: the results have mask_probs but no '
                                 'MaskPaste recipe was given')
            frame = meta['ori_shape'] if rescale else meta['img_shape']
            results.masks = paste_masks(results.mask_probs, results.bboxes, frame[:2],
                                        mask_paste.thr_binary, mode=mask_paste.mode)
            del results.mask_probs
    return results_list
