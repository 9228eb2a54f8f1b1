"""``DeformableDETRHead``: the deformable transformer, per-decoder-layer class and box branches,
one-to-one (Hungarian) losses, and top-k detections without NMS.

Shape letters: B images, Q queries, C classes (sigmoid: no background logit), E embed dims,
K decoder layers, N encoder tokens, G ground truths of one image. Boxes inside the head are
normalised (cx, cy, w, h) of each image's own ``img_shape``; losses on IoU and the results
are xyxy pixels.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS, TASK_UTILS
from rcnn_det.structures import (SampleList, bbox_cxcywh_to_xyxy, bbox_overlaps,
                                 bbox_xyxy_to_cxcywh, clip_boxes, meta_pairs)

from ..layers.deformable_transformer import inverse_sigmoid
from ..losses import QualityFocalLoss
from ..post_processing import Candidates, select_detections, topk_pairs
from ..recipes import NMSConfig, RecipeReader, build_or_pass
from ..utils import reduce_mean

DEFAULT_DETR_CLS_LOSS = dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                             loss_weight=2.0)
DEFAULT_DETR_BOX_LOSS = dict(type='L1Loss', loss_weight=5.0)
DEFAULT_DETR_IOU_LOSS = dict(type='GIoULoss', loss_weight=2.0)
DEFAULT_POSITIONAL_ENCODING = dict(type='SinePositionalEncoding', num_feats=128, normalize=True,
                                   offset=-0.5)


def image_masks(batch_samples_metas: list[dict], feats: list[Tensor]) -> list[Tensor]:
    """Per level (B, H_l, W_l) bool, True on padding: the batch canvas with each image's
    ``img_shape`` valid, resized (nearest) to the level."""
    height, width = batch_samples_metas[0]['batch_input_shape']
    device = feats[0].device
    shapes = meta_pairs(batch_samples_metas, 'img_shape', device, torch.long)   # (B, 2)
    rows = torch.arange(height, device=device)[None, :, None] >= shapes[:, 0, None, None]
    cols = torch.arange(width, device=device)[None, None, :] >= shapes[:, 1, None, None]
    masks = (rows | cols).to(feats[0].dtype)                                  # (B, H, W)
    return [F.interpolate(masks[None], size=f.shape[-2:]).to(torch.bool)[0] for f in feats]


def image_factors(metas: list[dict], device: torch.device) -> Tensor:
    """(B, 4) = (w, h, w, h) of each image's ``img_shape``."""
    return torch.tensor([[m['img_shape'][1], m['img_shape'][0]] * 2 for m in metas],
                        dtype=torch.float32, device=device)


def per_layer(layer_losses: list[dict], name: str = '{}', weight: float = 1.0) -> dict:
    """Each decoder layer's losses under mmdetection's keys: the last layer's bare (``name``
    formats each loss name, e.g. 'dn_{}' or '{}_aux'), layer k's with a 'd{k}.' prefix; each
    times ``weight``."""
    last = len(layer_losses) - 1
    return {('' if k == last else f'd{k}.') + name.format(key):
            value if weight == 1 else value * weight
            for k, losses in enumerate(layer_losses) for key, value in losses.items()}


class DETRHeadBase(BaseModule):
    """What every DETR-style head shares: per-decoder-layer class and box branches
    (``cls_branches``, ``reg_branches``), one-to-one (Hungarian) losses, and top-k detections.

    Losses: ``loss_cls`` is FocalLoss (labels) or QualityFocalLoss (labels and the IoU of each
    positive's predicted box with its target, as mmdetection's DETR heads give it); L1 on
    normalised cxcywh, GIoU on pixel boxes. ``train_cfg``: ``assigner``. ``test_cfg``:
    ``max_per_img`` (100), and optionally ``score_thr`` and ``nms`` (Co-DINO's soft-NMS,
    through the shared post-processing).
    """

    def __init__(self, num_classes: int, loss_cls=DEFAULT_DETR_CLS_LOSS,
                 loss_bbox=DEFAULT_DETR_BOX_LOSS, loss_iou=DEFAULT_DETR_IOU_LOSS,
                 sync_cls_avg_factor: bool = False, train_cfg: dict | None = None,
                 test_cfg: dict | None = None, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_classes = num_classes
        self.sync_cls_avg_factor = sync_cls_avg_factor
        self.loss_cls = build_or_pass(MODELS, loss_cls)
        self.loss_bbox = build_or_pass(MODELS, loss_bbox)
        self.loss_iou = build_or_pass(MODELS, loss_iou)
        if not getattr(self.loss_cls, 'use_sigmoid', False):
            raise ValueError(f'{type(self).__name__}: loss_cls must be a sigmoid loss '
                             '(FocalLoss, QualityFocalLoss)')
        train = RecipeReader(train_cfg, 'bbox_head.train_cfg')
        self.assigner = train.build('assigner', TASK_UTILS, None)
        train.reject_rest()
        test = RecipeReader(test_cfg, 'bbox_head.test_cfg')
        self.max_per_img = int(test.pop('max_per_img', 100))
        self.score_thr = float(test.pop('score_thr', 0.))
        nms = test.pop('nms', None)
        self.nms = None if nms is None else NMSConfig.from_cfg(nms, 'bbox_head.test_cfg')
        test.reject_rest()

    def build_branches(self, embed: int, num_pred: int, share: bool,
                       num_reg_fcs: int = 2) -> None:
        """``num_pred`` class Linears and box MLPs (num_reg_fcs x [Linear, ReLU], Linear(4));
        ``share``: one module repeated (the same parameters for every layer)."""
        fc_cls = nn.Linear(embed, self.num_classes)
        reg = [m for _ in range(num_reg_fcs) for m in (nn.Linear(embed, embed), nn.ReLU())]
        reg_branch = nn.Sequential(*reg, nn.Linear(embed, 4))
        if share:
            self.cls_branches = nn.ModuleList(fc_cls for _ in range(num_pred))
            self.reg_branches = nn.ModuleList(reg_branch for _ in range(num_pred))
        else:
            self.cls_branches = nn.ModuleList(copy.deepcopy(fc_cls) for _ in range(num_pred))
            self.reg_branches = nn.ModuleList(copy.deepcopy(reg_branch)
                                              for _ in range(num_pred))

    def init_branches(self) -> None:
        """mmdet's: class biases at prior 0.01, the last layer of every box branch zero."""
        prior_bias = -torch.log(torch.tensor((1 - 0.01) / 0.01)).item()
        for branch in self.cls_branches:
            nn.init.constant_(branch.bias, prior_bias)
        for branch in self.reg_branches:
            nn.init.zeros_(branch[-1].weight)
            nn.init.zeros_(branch[-1].bias)

    def predict_layers(self, queries: Tensor, init_ref: Tensor, inter_refs: Tensor,
                       eps: float = 1e-5) -> tuple[Tensor, Tensor]:
        """Each decoder layer's class logits (K, B, Q, C) and boxes (K, B, Q, 4), the boxes
        relative to the reference the layer started from (``init_ref`` for the first layer,
        ``inter_refs[k - 1]`` for layer k)."""
        cls_scores, bbox_preds = [], []
        for k, query in enumerate(queries):
            reference = inverse_sigmoid(init_ref if k == 0 else inter_refs[k - 1], eps=eps)
            delta = self.reg_branches[k](query)
            if reference.shape[-1] == 4:
                boxes = delta + reference
            else:
                boxes = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            cls_scores.append(self.cls_branches[k](query))
            bbox_preds.append(boxes.sigmoid())
        return torch.stack(cls_scores), torch.stack(bbox_preds)

    # ---- training -------------------------------------------------------------------------

    def layers_losses(self, all_cls_scores: Tensor, all_bbox_preds: Tensor,
                      batch_gt_instances: list[InstanceData], metas: list[dict]) -> dict:
        """The matched losses of every decoder layer: ``loss_*`` (last), ``d{k}.loss_*``."""
        if self.assigner is None:
            raise RuntimeError(f'{type(self).__name__}.loss needs a train_cfg with an assigner')
        return per_layer([self.loss_single(cls_scores, bbox_preds, batch_gt_instances, metas)
                          for cls_scores, bbox_preds in zip(all_cls_scores, all_bbox_preds)])

    def layers_losses_by_targets(self, all_cls_scores: Tensor, all_bbox_preds: Tensor,
                                 labels: Tensor, label_weights: Tensor, targets: Tensor,
                                 weights: Tensor, metas: list[dict]) -> list[dict]:
        """``loss_by_targets`` of every decoder layer (K, B, Q, *) against the same targets
        (denoising and positive queries: no matching)."""
        return [self.loss_by_targets(cls_scores, bbox_preds, labels, label_weights, targets,
                                     weights, metas)
                for cls_scores, bbox_preds in zip(all_cls_scores, all_bbox_preds)]

    def loss_single(self, cls_scores: Tensor, bbox_preds: Tensor,
                    batch_gt_instances: list[InstanceData], metas: list[dict]) -> dict:
        """One layer: Hungarian-match each image's Q predictions to its G objects, then the
        losses of ``loss_by_targets``."""
        labels, targets, weights = self.match(cls_scores, bbox_preds, batch_gt_instances, metas)
        return self.loss_by_targets(cls_scores, bbox_preds, labels, torch.ones_like(
            labels, dtype=cls_scores.dtype), targets, weights, metas)

    def match(self, cls_scores: Tensor, bbox_preds: Tensor,
              batch_gt_instances: list[InstanceData], metas: list[dict]
              ) -> tuple[Tensor, Tensor, Tensor]:
        """Hungarian targets of one layer: labels (B, Q) (C = unmatched), boxes (B, Q, 4)
        normalised cxcywh and their weights (B, Q, 4), 1 on matched queries."""
        num_images, num_queries = cls_scores.shape[:2]
        factors = image_factors(metas, cls_scores.device)[:, None]        # (B, 1, 4)
        labels = cls_scores.new_full((num_images, num_queries), self.num_classes,
                                     dtype=torch.long)
        # float32 targets whatever the predictions' precision (mixed-precision training)
        targets = cls_scores.new_zeros((num_images, num_queries, 4), dtype=torch.float32)
        weights = torch.zeros_like(targets)
        for i, (gt, meta) in enumerate(zip(batch_gt_instances, metas)):
            pred = InstanceData(scores=cls_scores[i].detach(),
                                bboxes=bbox_cxcywh_to_xyxy(bbox_preds[i].detach()) * factors[i])
            assign = self.assigner.assign(pred, gt, img_meta=meta)
            pos = (assign.gt_inds > 0).nonzero().squeeze(1)
            matched = assign.gt_inds[pos] - 1
            labels[i, pos] = gt.labels[matched]
            targets[i, pos] = bbox_xyxy_to_cxcywh(gt.bboxes[matched] / factors[i])
            weights[i, pos] = 1.0
        return labels, targets, weights

    def loss_by_targets(self, cls_scores: Tensor, bbox_preds: Tensor, labels: Tensor,
                        label_weights: Tensor, targets: Tensor, weights: Tensor,
                        metas: list[dict]) -> dict:
        """The class loss over every (query, class) / the number of positive queries, L1 on
        normalised cxcywh and GIoU on pixel boxes of the weighted queries / that number.

        cls_scores (B, Q, C), bbox_preds (B, Q, 4); labels (B, Q) with C = background,
        label_weights (B, Q); targets (B, Q, 4) normalised cxcywh, weights (B, Q, 4). The
        losses are computed in float32 whatever the predictions' precision.
        """
        cls_scores, bbox_preds = cls_scores.float(), bbox_preds.float()
        factors = image_factors(metas, cls_scores.device)[:, None]        # (B, 1, 4)
        num_pos = float((labels < self.num_classes).sum())
        cls_avg = max(reduce_mean(num_pos, cls_scores.device) if self.sync_cls_avg_factor
                      else num_pos, 1.0)
        box_avg = max(reduce_mean(num_pos, cls_scores.device), 1.0)
        flat_labels = labels.reshape(-1)
        target = flat_labels
        if isinstance(self.loss_cls, QualityFocalLoss):
            # the soft target of a positive is the IoU of its predicted box with its target
            pos = (flat_labels < self.num_classes).nonzero().squeeze(1)
            quality = cls_scores.new_zeros(flat_labels.shape)
            quality[pos] = bbox_overlaps(
                bbox_cxcywh_to_xyxy(bbox_preds.detach().reshape(-1, 4)[pos]),
                bbox_cxcywh_to_xyxy(targets.reshape(-1, 4)[pos]), is_aligned=True)
            target = (flat_labels, quality)
        loss_cls = self.loss_cls(cls_scores.reshape(-1, self.num_classes), target,
                                 label_weights.reshape(-1), avg_factor=cls_avg)
        boxes_px = bbox_cxcywh_to_xyxy(bbox_preds) * factors
        targets_px = bbox_cxcywh_to_xyxy(targets) * factors
        loss_iou = self.loss_iou(boxes_px.reshape(-1, 4), targets_px.reshape(-1, 4),
                                 weights.reshape(-1, 4), avg_factor=box_avg)
        loss_bbox = self.loss_bbox(bbox_preds.reshape(-1, 4), targets.reshape(-1, 4),
                                   weights.reshape(-1, 4), avg_factor=box_avg)
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox, loss_iou=loss_iou)

    # ---- inference ------------------------------------------------------------------------

    def predict_by_feat(self, cls_scores: Tensor, bbox_preds: Tensor, metas: list[dict]
                        ) -> list[InstanceData]:
        """cls_scores (B, Q, C), bbox_preds (B, Q, 4) of the last layer -> per image the
        ``max_per_img`` best (query, class) pairs above ``score_thr``, boxes clipped to the
        image (a query may appear with several classes); with ``nms``, those pairs then go
        through the shared post-processing, per class."""
        results, device = [], cls_scores.device
        shapes = meta_pairs(metas, 'img_shape', device)                    # (B, 2) = (h, w)
        for i, (scores, boxes) in enumerate(zip(cls_scores.sigmoid(), bbox_preds)):
            top, queries, labels = topk_pairs(scores, self.max_per_img)
            if self.score_thr > 0:
                keep = top > self.score_thr
                top, queries, labels = top[keep], queries[keep], labels[keep]
            xyxy = bbox_cxcywh_to_xyxy(boxes[queries]) * shapes[i].flip(0).repeat(2)
            xyxy = clip_boxes(xyxy, shapes[i:i + 1])
            results.append(InstanceData(bboxes=xyxy, scores=top, labels=labels))
        if self.nms is None:
            return results
        candidates = Candidates(
            boxes=torch.cat([r.bboxes for r in results]),
            scores=torch.cat([r.scores for r in results]),
            labels=torch.cat([r.labels for r in results]),
            image_ids=torch.cat([torch.full_like(r.labels, i) for i, r in enumerate(results)]),
            groups=torch.cat([r.labels for r in results]), num_groups=self.num_classes)
        return select_detections(candidates, len(results), self.nms, self.max_per_img)


@MODELS.register_module()
class DeformableDETRHead(DETRHeadBase):
    """mmdetection's DeformableDETRHead (2.x structure, whose names official checkpoints use):
    ``transformer``, ``cls_branches`` / ``reg_branches`` (one per decoder layer, one more for the
    encoder proposals when two-stage; shared unless ``with_box_refine``), ``query_embedding``
    (one-stage only). ``in_channels`` is accepted for mmdet configs and unused (the width is
    the transformer's ``embed_dims``).

    forward(mlvl_feats: L maps (B, E, H_l, W_l), metas) -> (cls_scores (K, B, Q, C) logits,
        bbox_preds (K, B, Q, 4) normalised cxcywh, enc_cls (B, N, C) or None, enc_boxes (B, N, 4)
        or None)
    loss(...) -> dict(loss_cls, loss_bbox, loss_iou (last layer), d{k}.loss_* (earlier layers),
        enc_loss_* (two-stage: the encoder proposals, every object as class 0))
    predict(...) -> B x InstanceData(bboxes (100, 4) pixels of the network input, scores,
        labels): the best (query, class) pairs of the last layer, no NMS.
    """

    def __init__(self, num_classes: int, transformer: dict, num_query: int = 300,
                 num_reg_fcs: int = 2, in_channels: int | None = None,
                 sync_cls_avg_factor: bool = False,
                 positional_encoding: dict = DEFAULT_POSITIONAL_ENCODING,
                 loss_cls=DEFAULT_DETR_CLS_LOSS, loss_bbox=DEFAULT_DETR_BOX_LOSS,
                 loss_iou=DEFAULT_DETR_IOU_LOSS, with_box_refine: bool = False,
                 as_two_stage: bool = False, mixed_selection: bool = False,
                 train_cfg: dict | None = None,
                 test_cfg: dict | None = None, init_cfg=None) -> None:
        super().__init__(num_classes, loss_cls, loss_bbox, loss_iou, sync_cls_avg_factor,
                         train_cfg, test_cfg, init_cfg=init_cfg)
        self.num_query = num_query
        self.with_box_refine = with_box_refine
        self.as_two_stage = as_two_stage
        self.mixed_selection = mixed_selection
        self.positional_encoding = MODELS.build(positional_encoding)
        self.transformer = MODELS.build(dict(copy.deepcopy(transformer),
                                             as_two_stage=as_two_stage,
                                             mixed_selection=mixed_selection))
        embed = self.transformer.embed_dims
        num_layers = self.transformer.decoder.num_layers
        self.build_branches(embed, num_layers + 1 if as_two_stage else num_layers,
                            share=not with_box_refine, num_reg_fcs=num_reg_fcs)
        if not as_two_stage:
            self.query_embedding = nn.Embedding(num_query, embed * 2)   # position, content
        elif mixed_selection:
            self.query_embedding = nn.Embedding(num_query, embed)       # content
            if self.transformer.two_stage_num_proposals != num_query:
                raise ValueError(
                    f'{type(self).__name__}: with mixed_selection each of the '
                    f'{self.transformer.two_stage_num_proposals} selected proposals '
                    f'(transformer.two_stage_num_proposals) needs one of the num_query='
                    f'{num_query} content queries; make them equal')

    def init_weights(self) -> None:
        """mmdet's: the transformer's own init; class biases at prior 0.01; the last layer of
        every box branch zero (one-stage: its size outputs -2, i.e. small initial boxes)."""
        self.transformer.init_weights()
        self.init_branches()
        if not self.as_two_stage:
            nn.init.constant_(self.reg_branches[0][-1].bias.data[2:], -2.0)
        self._is_init = True

    def forward(self, mlvl_feats: tuple[Tensor, ...], batch_img_metas: list[dict]):
        return self.forward_with_memory(mlvl_feats, batch_img_metas)[:4]

    def forward_with_memory(self, mlvl_feats: tuple[Tensor, ...], batch_img_metas: list[dict]):
        """``forward``'s outputs and then the transformer's ``EncodedLevels``."""
        masks = image_masks(batch_img_metas, list(mlvl_feats))
        positions = [self.positional_encoding(m) for m in masks]
        query_embed = getattr(self, 'query_embedding', None)
        queries, init_ref, inter_refs, enc_cls, enc_coord_unact, enc = \
            self.transformer.forward_with_memory(
                list(mlvl_feats), masks, None if query_embed is None else query_embed.weight,
                positions, reg_branches=self.reg_branches if self.with_box_refine else None,
                cls_branches=self.cls_branches if self.as_two_stage else None)
        cls_scores, bbox_preds = self.predict_layers(queries, init_ref, inter_refs)
        enc_boxes = enc_coord_unact.sigmoid() if enc_coord_unact is not None else None
        return cls_scores, bbox_preds, enc_cls, enc_boxes, enc

    # ---- training -------------------------------------------------------------------------

    def loss(self, x: tuple[Tensor, ...], batch_data_samples: SampleList) -> dict:
        metas = [s.metainfo for s in batch_data_samples]
        gts = [s.gt_instances for s in batch_data_samples]
        return self.loss_by_feat(*self(x, metas), gts, metas)

    def loss_by_feat(self, all_cls_scores: Tensor, all_bbox_preds: Tensor,
                     enc_cls_scores: Tensor | None, enc_bbox_preds: Tensor | None,
                     batch_gt_instances: list[InstanceData], metas: list[dict]) -> dict:
        losses = self.layers_losses(all_cls_scores, all_bbox_preds, batch_gt_instances, metas)
        if enc_cls_scores is not None:
            binary = [InstanceData(bboxes=gt.bboxes, labels=torch.zeros_like(gt.labels))
                      for gt in batch_gt_instances]
            layer = self.loss_single(enc_cls_scores, enc_bbox_preds, binary, metas)
            losses.update({'enc_' + name: value for name, value in layer.items()})
        return losses

    # ---- inference ------------------------------------------------------------------------

    def predict(self, x: tuple[Tensor, ...], batch_data_samples: SampleList
                ) -> list[InstanceData]:
        metas = [s.metainfo for s in batch_data_samples]
        cls_scores, bbox_preds = self(x, metas)[:2]
        return self.predict_by_feat(cls_scores[-1], bbox_preds[-1], metas)
