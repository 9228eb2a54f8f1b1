"""``Shared2FCBBoxHead``: two shared FC layers, then per-RoI class scores and box offsets.

Shape letters: K RoIs of the batch (R sampled RoIs in training), C classes (index C =
background), S the RoI feature size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS, TASK_UTILS
from rcnn_det.structures import meta_pairs

from ...post_processing import Candidates, select_detections
from ...recipes import DetectionRecipe, build_or_pass
from ...task_modules.samplers import SamplingResult

DEFAULT_RCNN_CODER = dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                          target_stds=[0.1, 0.1, 0.2, 0.2])
DEFAULT_RCNN_CLS_LOSS = dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)
DEFAULT_RCNN_BOX_LOSS = dict(type='L1Loss', loss_weight=1.0)
DEFAULT_INIT = [dict(type='Normal', std=0.01, override=dict(name='fc_cls')),
                dict(type='Normal', std=0.001, override=dict(name='fc_reg')),
                dict(type='Xavier', distribution='uniform', override=dict(name='shared_fcs'))]


@dataclass
class RoITargets:
    labels: Tensor          # (R,) class in [0, C]; C = background
    label_weights: Tensor   # (R,)
    bbox_targets: Tensor    # (R, 4) offsets from the RoI (or gt boxes when reg_decoded_bbox)
    bbox_weights: Tensor    # (R, 4) 1 on positives


@MODELS.register_module()
class Shared2FCBBoxHead(BaseModule):
    """mmdetection's Shared2FCBBoxHead (ConvFCBBoxHead with two shared FCs).

    forward(x (K, in_channels, S, S)) -> (cls_score (K, C + 1), bbox_pred (K, 4C) or (K, 4))
    """

    def __init__(self, num_classes: int = 80, in_channels: int = 256, roi_feat_size: int = 7,
                 fc_out_channels: int = 1024, bbox_coder=DEFAULT_RCNN_CODER,
                 reg_class_agnostic: bool = False, reg_decoded_bbox: bool = False,
                 loss_cls=DEFAULT_RCNN_CLS_LOSS, loss_bbox=DEFAULT_RCNN_BOX_LOSS,
                 predict_box_type: str = 'hbox', init_cfg=DEFAULT_INIT) -> None:
        super().__init__(init_cfg=init_cfg)
        if predict_box_type != 'hbox':
            raise ValueError("Shared2FCBBoxHead: only predict_box_type='hbox' is supported")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.roi_feat_size = roi_feat_size
        self.fc_out_channels = fc_out_channels
        self.reg_class_agnostic = reg_class_agnostic
        self.reg_decoded_bbox = reg_decoded_bbox
        self.bbox_coder = build_or_pass(TASK_UTILS, bbox_coder)
        self.loss_cls = build_or_pass(MODELS, loss_cls)
        self.loss_bbox = build_or_pass(MODELS, loss_bbox)
        flat = in_channels * roi_feat_size * roi_feat_size
        self.shared_fcs = nn.ModuleList([nn.Linear(flat, fc_out_channels),
                                         nn.Linear(fc_out_channels, fc_out_channels)])
        self.fc_cls = nn.Linear(fc_out_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_out_channels, 4 if reg_class_agnostic else 4 * num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)                                                 # (K, C * S * S)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)

    # ---- training -------------------------------------------------------------------------

    def get_targets(self, sampling_results: list[SamplingResult], pos_weight: float = -1
                    ) -> RoITargets:
        """Targets of the sampled RoIs of all images, in ``SamplingResult.priors`` order."""
        labels, label_weights, bbox_targets, bbox_weights = [], [], [], []
        for res in sampling_results:
            num_pos, num_neg = res.pos_priors.shape[0], res.neg_priors.shape[0]
            lab = res.pos_priors.new_full((num_pos + num_neg,), self.num_classes, dtype=torch.long)
            lab[:num_pos] = res.pos_gt_labels
            lw = res.pos_priors.new_ones(num_pos + num_neg)
            lw[:num_pos] = 1.0 if pos_weight <= 0 else pos_weight
            tgt = res.pos_priors.new_zeros(num_pos + num_neg, 4)
            if num_pos > 0:
                tgt[:num_pos] = (res.pos_gt_bboxes if self.reg_decoded_bbox
                                 else self.bbox_coder.encode(res.pos_priors, res.pos_gt_bboxes))
            bw = res.pos_priors.new_zeros(num_pos + num_neg, 4)
            bw[:num_pos] = 1.0
            labels.append(lab), label_weights.append(lw)
            bbox_targets.append(tgt), bbox_weights.append(bw)
        return RoITargets(torch.cat(labels), torch.cat(label_weights), torch.cat(bbox_targets),
                          torch.cat(bbox_weights))

    def loss(self, cls_score: Tensor, bbox_pred: Tensor, rois: Tensor,
             targets: RoITargets) -> dict:
        """dict(loss_cls, acc (percent, logged only), loss_bbox) as mmdetection's BBoxHead."""
        labels = targets.labels
        avg_factor = max(float((targets.label_weights > 0).sum()), 1.0)
        losses = dict(loss_cls=self.loss_cls(cls_score, labels, targets.label_weights,
                                             avg_factor=avg_factor),
                      acc=(cls_score.argmax(-1) == labels).float().mean() * 100)
        pos = (labels >= 0) & (labels < self.num_classes)
        if not pos.any():
            losses['loss_bbox'] = bbox_pred.sum() * 0  # keeps the graph whole for DDP
            return losses
        if self.reg_decoded_bbox:
            bbox_pred = self.bbox_coder.decode(rois[:, 1:], bbox_pred)
        if self.reg_class_agnostic:
            pos_pred = bbox_pred.reshape(bbox_pred.shape[0], 4)[pos]
        else:
            pos_pred = bbox_pred.reshape(bbox_pred.shape[0], -1, 4)[pos, labels[pos]]
        losses['loss_bbox'] = self.loss_bbox(pos_pred, targets.bbox_targets[pos],
                                             targets.bbox_weights[pos],
                                             avg_factor=targets.bbox_targets.shape[0])
        return losses

    def loss_and_target(self, cls_score: Tensor, bbox_pred: Tensor, rois: Tensor,
                        sampling_results: list[SamplingResult], pos_weight: float = -1
                        ) -> tuple[dict, RoITargets]:
        targets = self.get_targets(sampling_results, pos_weight)
        return self.loss(cls_score, bbox_pred, rois, targets), targets

    # ---- inference ------------------------------------------------------------------------

    def predict_by_feat(self, rois: Tensor, cls_score: Tensor, bbox_pred: Tensor,
                        batch_img_metas: list[dict], recipe: DetectionRecipe
                        ) -> list[InstanceData]:
        """Decode and clip every (RoI, class) box, then ``select_detections``: scores above
        ``score_thr``, per-class NMS, the ``max_per_img`` best per image.

        rois (K, 5) of all images; returns per image InstanceData(bboxes (D, 4) in the network
        input's frame, scores (D,), labels (D,)).
        """
        num_rois = rois.shape[0]
        image_ids = rois[:, 0].long()
        scores = cls_score.softmax(-1)[:, :-1] if cls_score.numel() else cls_score[:, :-1]
        img_shapes = meta_pairs(batch_img_metas, 'img_shape', rois.device, rois.dtype)  # (B, 2)
        boxes = self.bbox_coder.decode(rois[:, 1:], bbox_pred,
                                       max_shape=img_shapes[image_ids])  # (K, 4C) or (K, 4)
        boxes = boxes.reshape(num_rois, bbox_pred.shape[-1] // 4, 4).expand(
            -1, self.num_classes, 4)                                     # (K, C, 4)
        labels = torch.arange(self.num_classes, device=rois.device).expand_as(scores)  # (K, C)
        candidates = Candidates(boxes=boxes.reshape(-1, 4), scores=scores.reshape(-1),
                                labels=labels.reshape(-1),
                                image_ids=image_ids[:, None].expand_as(scores).reshape(-1),
                                groups=labels.reshape(-1), num_groups=self.num_classes)
        return select_detections(candidates, len(batch_img_metas), recipe.nms,
                                 recipe.max_per_img, recipe.min_bbox_size, recipe.score_thr)
