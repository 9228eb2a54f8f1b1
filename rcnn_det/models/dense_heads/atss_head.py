"""``ATSSHead``: a one-stage head with classification, box and centerness branches, trained
with adaptive training sample selection (Zhang et al., 2020).

Shape letters: B images, L levels, A anchors per location, H_l x W_l level size, N anchors per
image over all levels, C classes (index C = background), P positive anchors of the batch,
D detections of one image.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule, Scale
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS, TASK_UTILS
from rcnn_det.structures import SampleList, meta_pairs, unpack_gt_instances

from ..post_processing import (Candidates, filter_scores_and_topk, select_detections,
                               size_scales)
from ..recipes import DenseDetectionRecipe, build_or_pass
from ..task_modules.anchor_targets import AnchorTargets, AnchorTrainRecipe, anchor_targets
from ..utils import reduce_mean
from .base_dense_head import BaseDenseHead
from .rpn_head import flatten_levels

DEFAULT_ATSS_ANCHORS = dict(type='AnchorGenerator', ratios=[1.0], octave_base_scale=8,
                            scales_per_octave=1, strides=[8, 16, 32, 64, 128])
DEFAULT_ATSS_CODER = dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                          target_stds=[0.1, 0.1, 0.2, 0.2])
DEFAULT_FOCAL_LOSS = dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                          loss_weight=1.0)
DEFAULT_GIOU_LOSS = dict(type='GIoULoss', loss_weight=2.0)
DEFAULT_CENTERNESS_LOSS = dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)
DEFAULT_ATSS_INIT = dict(type='Normal', layer='Conv2d', std=0.01,
                         override=dict(type='Normal', name='atss_cls', std=0.01, bias_prob=0.01))


@dataclass
class ATSSLossOutput:
    """``ATSSHead.loss_and_targets``: the losses and what they were computed from."""
    losses: dict            # loss_cls, loss_bbox, loss_centerness: L per-level terms each
    anchors: Tensor         # (N, 4) every anchor of every level, as the maps flatten
    targets: AnchorTargets  # per image (B, N, ...)


def centerness_target(anchors: Tensor, gt_bboxes: Tensor) -> Tensor:
    """(P, 4) anchors, (P, 4) their gt boxes -> (P,) sqrt(min(l, r) / max(l, r) *
    min(t, b) / max(t, b)) of the anchor centre's distances to the box sides (FCOS)."""
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    left_right = torch.stack([cx - gt_bboxes[:, 0], gt_bboxes[:, 2] - cx], 1)
    top_bottom = torch.stack([cy - gt_bboxes[:, 1], gt_bboxes[:, 3] - cy], 1)
    return torch.sqrt(left_right.min(1).values / left_right.max(1).values
                      * top_bottom.min(1).values / top_bottom.max(1).values)


def level_sums(loss: Tensor, levels: Tensor, num_levels: int, norm: float,
               pred: Tensor) -> list[Tensor]:
    """(P,) per-positive terms -> L per-level sums / ``norm``. Each also adds ``pred.sum() * 0``
    so that a batch without positives still reaches every parameter (DDP needs them all)."""
    sums = loss.new_zeros(num_levels).index_add(0, levels, loss)
    zero = pred.sum() * 0
    return [level / norm + zero for level in sums]


@MODELS.register_module()
class ATSSHead(BaseDenseHead):
    """mmdetection's ATSSHead: ``stacked_convs`` GroupNorm convs per branch, then per anchor
    C class logits, 4 box offsets (times a learned per-level ``Scale``) and a centerness logit.

    forward(x) -> (cls_scores, bbox_preds, centernesses)
        x:            L maps (B, in_channels, H_l, W_l)
        cls_scores:   L maps (B, A * C, H_l, W_l)
        bbox_preds:   L maps (B, A * 4, H_l, W_l)  offsets from the anchors
        centernesses: L maps (B, A, H_l, W_l)
    loss(...) -> dict(loss_cls, loss_bbox, loss_centerness), each a list of L scalars
    predict(...) -> B x InstanceData(bboxes (D, 4) in the network input's frame, scores (D,),
        labels (D,)); scores are class probability times centerness.
    """

    def __init__(self, num_classes: int, in_channels: int, pred_kernel_size: int = 3,
                 stacked_convs: int = 4, feat_channels: int = 256,
                 conv_cfg: dict | None = None,
                 norm_cfg: dict | None = dict(type='GN', num_groups=32, requires_grad=True),
                 reg_decoded_bbox: bool = True, anchor_generator=DEFAULT_ATSS_ANCHORS,
                 bbox_coder=DEFAULT_ATSS_CODER, loss_cls=DEFAULT_FOCAL_LOSS,
                 loss_bbox=DEFAULT_GIOU_LOSS, loss_centerness=DEFAULT_CENTERNESS_LOSS,
                 train_cfg: dict | None = None, test_cfg: dict | None = None,
                 init_cfg=DEFAULT_ATSS_INIT) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.reg_decoded_bbox = reg_decoded_bbox
        self.prior_generator = build_or_pass(TASK_UTILS, anchor_generator)
        self.bbox_coder = build_or_pass(TASK_UTILS, bbox_coder)
        self.loss_cls = build_or_pass(MODELS, loss_cls)
        self.loss_bbox = build_or_pass(MODELS, loss_bbox)
        self.loss_centerness = build_or_pass(MODELS, loss_centerness)
        if not getattr(self.loss_cls, 'use_sigmoid', False):
            raise ValueError('ATSSHead: loss_cls must be a sigmoid loss (use_sigmoid=True)')
        self.cls_out_channels = num_classes
        self.num_base_priors = self.prior_generator.num_base_priors[0]

        def branch() -> nn.ModuleList:
            return nn.ModuleList(
                ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3,
                           padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
                for i in range(stacked_convs))
        self.cls_convs, self.reg_convs = branch(), branch()
        pad = pred_kernel_size // 2
        self.atss_cls = nn.Conv2d(feat_channels, self.num_base_priors * num_classes,
                                  pred_kernel_size, padding=pad)
        self.atss_reg = nn.Conv2d(feat_channels, self.num_base_priors * 4, pred_kernel_size,
                                  padding=pad)
        self.atss_centerness = nn.Conv2d(feat_channels, self.num_base_priors, pred_kernel_size,
                                         padding=pad)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.prior_generator.strides)

        self.train_recipe = AnchorTrainRecipe.from_cfg(train_cfg, 'bbox_head.train_cfg')
        self.test_recipe = DenseDetectionRecipe.from_cfg(test_cfg, 'bbox_head.test_cfg')

    def forward(self, x: tuple[Tensor, ...]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        cls_scores, bbox_preds, centernesses = [], [], []
        for feat, scale in zip(x, self.scales):
            cls_feat, reg_feat = feat, feat
            for conv in self.cls_convs:
                cls_feat = conv(cls_feat)
            for conv in self.reg_convs:
                reg_feat = conv(reg_feat)
            cls_scores.append(self.atss_cls(cls_feat))
            bbox_preds.append(scale(self.atss_reg(reg_feat)).float())
            centernesses.append(self.atss_centerness(reg_feat))
        return cls_scores, bbox_preds, centernesses

    # ---- training -------------------------------------------------------------------------

    def loss(self, x: tuple[Tensor, ...], batch_data_samples: SampleList) -> dict:
        return self.loss_by_feat(*self(x), batch_data_samples)

    def loss_by_feat(self, cls_scores: list[Tensor], bbox_preds: list[Tensor],
                     centernesses: list[Tensor], batch_data_samples: SampleList) -> dict:
        return self.loss_and_targets(cls_scores, bbox_preds, centernesses,
                                     batch_data_samples).losses

    def loss_and_targets(self, cls_scores: list[Tensor], bbox_preds: list[Tensor],
                         centernesses: list[Tensor], batch_data_samples: SampleList
                         ) -> ATSSLossOutput:
        """The losses, the anchors of every level (N, 4) and their targets.

        mmdet's ATSS losses, one term per level:

        loss_cls: focal loss over every anchor / number of positives;
        loss_bbox: GIoU of each positive's decoded box, weighted by its centerness target,
            / the sum of those targets over the batch;
        loss_centerness: BCE of the centerness logit vs its target / number of positives.
        """
        if self.train_recipe is None:
            raise RuntimeError('ATSSHead.loss needs a train_cfg with an assigner')
        gts, gts_ignore, metas = unpack_gt_instances(batch_data_samples)
        featmap_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        device = cls_scores[0].device
        anchors = torch.cat(self.prior_generator.grid_priors(featmap_sizes, device=device))
        valid = torch.stack([
            torch.cat(self.prior_generator.valid_flags(featmap_sizes, meta.get(
                'pad_shape', meta['batch_input_shape']), device)) for meta in metas])
        level_sizes = [h * w * self.num_base_priors for h, w in featmap_sizes]
        targets = anchor_targets(anchors, valid, gts, gts_ignore, self.train_recipe,
                                 self.bbox_coder, self.num_classes, self.reg_decoded_bbox,
                                 level_sizes=level_sizes)
        num_images = len(gts)
        logits = flatten_levels(cls_scores, self.num_classes)             # (B, N, C)
        deltas = flatten_levels(bbox_preds, 4)                           # (B, N, 4)
        center = flatten_levels(centernesses, 1)[..., 0]                 # (B, N)
        avg_factor = reduce_mean(targets.avg_factor, device)   # PseudoSampler: positives, >= 1
        loss_cls = self.loss_cls(logits.reshape(-1, self.num_classes), targets.labels.reshape(-1),
                                 targets.label_weights.reshape(-1), reduction_override='none')
        loss_cls = loss_cls.reshape(num_images, -1, self.num_classes).sum(-1)   # (B, N)
        pos = (targets.labels >= 0) & (targets.labels < self.num_classes)     # (B, N)
        levels = torch.repeat_interleave(torch.arange(len(level_sizes), device=device),
                                         torch.tensor(level_sizes, device=device))
        pos_levels = levels[None].expand_as(pos)[pos]                    # (P,)
        pos_anchors = anchors[None].expand(num_images, -1, -1)[pos]       # (P, 4)
        pos_gt = targets.bbox_targets[pos]                               # (P, 4)
        if not self.reg_decoded_bbox:
            pos_gt = self.bbox_coder.decode(pos_anchors, pos_gt)
        center_targets = centerness_target(pos_anchors, pos_gt)          # (P,)
        pos_boxes = self.bbox_coder.decode(pos_anchors, deltas[pos])     # (P, 4)
        loss_bbox = self.loss_bbox(pos_boxes, pos_gt, reduction_override='none') * center_targets
        loss_center = self.loss_centerness(center[pos], center_targets,
                                           reduction_override='none')    # (P,)
        bbox_norm = max(reduce_mean(float(center_targets.sum()), device), 1.0)
        num_levels = len(level_sizes)
        losses = dict(
            loss_cls=[part.sum() / avg_factor for part in loss_cls.split(level_sizes, 1)],
            loss_bbox=level_sums(loss_bbox, pos_levels, num_levels, bbox_norm, deltas),
            loss_centerness=level_sums(loss_center, pos_levels, num_levels, avg_factor, center))
        return ATSSLossOutput(losses, anchors, targets)

    # ---- inference ------------------------------------------------------------------------

    def predict(self, x: tuple[Tensor, ...], batch_data_samples: SampleList
                ) -> list[InstanceData]:
        if self.test_recipe is None:
            raise RuntimeError('ATSSHead.predict needs a test_cfg (nms_pre, score_thr, nms, '
                               'max_per_img)')
        metas = [s.metainfo for s in batch_data_samples]
        return self.predict_by_feat(*self(x), metas, self.test_recipe)

    def predict_by_feat(self, cls_scores: list[Tensor], bbox_preds: list[Tensor],
                        centernesses: list[Tensor], batch_img_metas: list[dict],
                        recipe: DenseDetectionRecipe) -> list[InstanceData]:
        """Per image and level the ``nms_pre`` best (anchor, class) pairs above ``score_thr``,
        decoded and clipped, scored class probability x centerness; then one
        ``select_detections`` for the batch (per-class NMS, ``max_per_img`` per image)."""
        device = cls_scores[0].device
        anchors = self.prior_generator.grid_priors([tuple(c.shape[-2:]) for c in cls_scores],
                                                   device=device)
        probs = [flatten_levels([c], self.num_classes).sigmoid() for c in cls_scores]
        deltas = [flatten_levels([b], 4) for b in bbox_preds]
        center = [flatten_levels([c], 1)[..., 0].sigmoid() for c in centernesses]
        priors, offsets, scores, labels, image_ids = [], [], [], [], []
        for i in range(len(batch_img_metas)):
            for level_anchors, p, d, c in zip(anchors, probs, deltas, center):
                values, idx, level_labels = filter_scores_and_topk(p[i], recipe.score_thr,
                                                                   recipe.nms_pre)
                priors.append(level_anchors[idx])
                offsets.append(d[i][idx])
                scores.append(values * c[i][idx])
                labels.append(level_labels)
                image_ids.append(torch.full_like(idx, i))
        image_ids = torch.cat(image_ids)
        shapes = meta_pairs(batch_img_metas, 'img_shape', device, torch.long)[image_ids]  # (M, 2)
        boxes = self.bbox_coder.decode(torch.cat(priors), torch.cat(offsets), max_shape=shapes)
        labels = torch.cat(labels)
        candidates = Candidates(boxes=boxes, scores=torch.cat(scores), labels=labels,
                                image_ids=image_ids, groups=labels, num_groups=self.num_classes)
        original = (size_scales(batch_img_metas, device) if recipe.size_frame == 'original'
                    else None)
        return select_detections(candidates, len(batch_img_metas), recipe.nms,
                                 recipe.max_per_img, recipe.min_bbox_size,
                                 original_scales=original)
