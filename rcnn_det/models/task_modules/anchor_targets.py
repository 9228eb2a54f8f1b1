"""``anchor_targets()``: classification and regression targets of every anchor of a batch.

Shared by the anchor-based dense heads (RPNHead, ATSSHead). Shape letters: B images,
N anchors per image over all levels, G ground-truth boxes of one image, C classes (C =
background label).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import TASK_UTILS

from ..recipes import RecipeReader
from .samplers import PseudoSampler


@dataclass(frozen=True)
class AnchorTrainRecipe:
    """An anchor head's mmdet ``train_cfg``, read: the built assigner and sampler (mmdet's
    PseudoSampler when the config names none) and the positives' classification weight."""
    assigner: Any
    sampler: Any
    pos_weight: float = -1      # <= 0: positives weigh 1

    @classmethod
    def from_cfg(cls, train_cfg: dict | None, where: str) -> AnchorTrainRecipe | None:
        """None for a head built for inference only; unknown keys, a missing assigner and
        ``allowed_border >= 0`` fail naming ``where``."""
        if train_cfg is None:
            return None
        train = RecipeReader(train_cfg, where, accepted_no_op=('debug',))
        assigner = train.build('assigner', TASK_UTILS, None)
        sampler = train.build('sampler', TASK_UTILS, None)
        allowed_border = train.pop('allowed_border', -1)
        pos_weight = train.pop('pos_weight', -1)
        train.reject_rest()
        if assigner is None:
            raise KeyError(f"{where}: missing required key 'assigner'")
        if allowed_border >= 0:
            raise NotImplementedError(f'{where}.allowed_border >= 0 is not supported; use -1 '
                                      '(every anchor is used, as in all mmdet configs)')
        return cls(assigner, sampler if sampler is not None else PseudoSampler(), pos_weight)


@dataclass
class AnchorTargets:
    labels: Tensor          # (B, N) int64 class in [0, C]; C = background
    label_weights: Tensor   # (B, N) float: 0 for anchors left out of the loss
    bbox_targets: Tensor    # (B, N, 4) encoded offsets (or gt boxes when reg_decoded_bbox)
    bbox_weights: Tensor    # (B, N, 4) float: 1 on positives
    avg_factor: float       # the loss normaliser: the sum of the images' SamplingResult.avg_factor
    num_pos: int


def anchor_targets(anchors: Tensor, valid_flags: Tensor, batch_gt_instances: list[InstanceData],
                   batch_gt_instances_ignore: list[InstanceData | None],
                   recipe: AnchorTrainRecipe, bbox_coder, num_classes: int,
                   reg_decoded_bbox: bool = False, class_agnostic: bool = False,
                   level_sizes: list[int] | None = None) -> AnchorTargets:
    """Assign, sample and encode, one image at a time (image sizes and box counts differ).

    Args:
        anchors: (N, 4) xyxy anchors of all levels, the same for every image.
        valid_flags: (B, N) bool, False for anchors centred on another image's padding.
        recipe: the assigner, the sampler (whose results carry their share of the loss
            normaliser) and ``pos_weight``.
        class_agnostic: every object is class 0 (the RPN).
        level_sizes: anchors per level; given, the assigner is called as mmdet calls ATSS,
            ``assign(priors, num_level_priors, gt, gt_ignore)`` with each image's count of valid
            anchors per level.
    """
    num_images, num_anchors = valid_flags.shape
    labels = anchors.new_full((num_images, num_anchors), num_classes, dtype=torch.long)
    label_weights = anchors.new_zeros((num_images, num_anchors))
    bbox_targets = anchors.new_zeros((num_images, num_anchors, 4))
    bbox_weights = anchors.new_zeros((num_images, num_anchors, 4))
    avg_factor, num_pos_total = 0, 0
    for i, (gt, gt_ignore) in enumerate(zip(batch_gt_instances, batch_gt_instances_ignore)):
        valid = valid_flags[i].nonzero(as_tuple=False).squeeze(1)
        priors = InstanceData(priors=anchors[valid])
        if level_sizes is None:
            assign = recipe.assigner.assign(priors, gt, gt_ignore)
        else:  # mmdet's ATSS signature: the level counts come second
            counts = [int(v.sum()) for v in valid_flags[i].split(level_sizes)]
            assign = recipe.assigner.assign(priors, counts, gt, gt_ignore)
        result = recipe.sampler.sample(assign, priors, gt)
        pos, neg = result.pos_inds, result.neg_inds
        pos_gt_bboxes, pos_labels = result.pos_gt_bboxes, result.pos_gt_labels
        avg_factor += result.avg_factor
        num_pos_total += pos.numel()
        pos_full, neg_full = valid[pos], valid[neg]
        if pos.numel() > 0:
            target = (pos_gt_bboxes if reg_decoded_bbox
                      else bbox_coder.encode(anchors[pos_full], pos_gt_bboxes))
            bbox_targets[i, pos_full] = target.to(bbox_targets.dtype)
            bbox_weights[i, pos_full] = 1.0
            labels[i, pos_full] = 0 if class_agnostic else pos_labels
            label_weights[i, pos_full] = 1.0 if recipe.pos_weight <= 0 else recipe.pos_weight
        label_weights[i, neg_full] = 1.0
    return AnchorTargets(labels, label_weights, bbox_targets, bbox_weights,
                         float(avg_factor), num_pos_total)
