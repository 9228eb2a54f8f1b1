"""``RPNHead``: class-agnostic objectness and box offsets for every anchor, and proposals.

Shape letters: B images, L levels, A anchors per location, H_l x W_l level size, N anchors per
image over all levels, K proposals kept per image.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS, TASK_UTILS
from rcnn_det.structures import SampleList, meta_pairs, unpack_gt_instances

from ..post_processing import Candidates, at_most, select_detections, size_scales
from ..recipes import ProposalRecipe, build_or_pass
from ..task_modules.anchor_targets import AnchorTrainRecipe, anchor_targets
from .base_dense_head import BaseDenseHead

DEFAULT_RPN_ANCHORS = dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0],
                           strides=[4, 8, 16, 32, 64])
DEFAULT_RPN_CODER = dict(type='DeltaXYWHBBoxCoder', target_means=(.0, .0, .0, .0),
                         target_stds=(1.0, 1.0, 1.0, 1.0))
DEFAULT_RPN_CLS_LOSS = dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)
DEFAULT_RPN_BOX_LOSS = dict(type='L1Loss', loss_weight=1.0)


def flatten_levels(maps: list[Tensor], channels: int) -> Tensor:
    """L maps (B, A * channels, H_l, W_l) -> (B, N, channels) in anchor order."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, channels) for m in maps], 1)


@MODELS.register_module()
class RPNHead(BaseDenseHead):
    """Class-agnostic proposal head: a shared 3x3 conv, then per-anchor objectness and deltas.

    forward(x) -> (cls_scores, bbox_preds)
        x:          L maps (B, in_channels, H_l, W_l)
        cls_scores: L maps (B, A * cls_out_channels, H_l, W_l)
        bbox_preds: L maps (B, A * 4, H_l, W_l)   offsets relative to the anchors
    loss(...) -> dict(loss_rpn_cls=[L scalars], loss_rpn_bbox=[L scalars])
    predict(...) -> B x InstanceData(bboxes (K, 4) xyxy pixels of the network input, scores
        (K,), labels zeros (K,))
    loss_and_predict(x, samples, proposal_recipe) -> (the losses, the training proposals)
    """

    def __init__(self, in_channels: int, num_classes: int = 1, feat_channels: int = 256,
                 num_convs: int = 1, anchor_generator=DEFAULT_RPN_ANCHORS,
                 bbox_coder=DEFAULT_RPN_CODER, reg_decoded_bbox: bool = False,
                 loss_cls=DEFAULT_RPN_CLS_LOSS, loss_bbox=DEFAULT_RPN_BOX_LOSS,
                 train_cfg: dict | None = None, test_cfg: dict | None = None,
                 init_cfg=dict(type='Normal', layer='Conv2d', std=0.01)) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_classes != 1:
            raise ValueError(f'RPNHead is class-agnostic: num_classes must be 1, got {num_classes}')
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.prior_generator = build_or_pass(TASK_UTILS, anchor_generator)
        self.bbox_coder = build_or_pass(TASK_UTILS, bbox_coder)
        self.reg_decoded_bbox = reg_decoded_bbox
        self.loss_cls = build_or_pass(MODELS, loss_cls)
        self.loss_bbox = build_or_pass(MODELS, loss_bbox)
        self.use_sigmoid_cls = getattr(self.loss_cls, 'use_sigmoid', False)
        self.cls_out_channels = num_classes if self.use_sigmoid_cls else num_classes + 1
        num_anchors = self.prior_generator.num_base_priors[0]
        if num_convs > 1:
            self.rpn_conv = nn.Sequential(*[
                ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3,
                           padding=1, inplace=False) for i in range(num_convs)])
        else:
            self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_anchors * self.cls_out_channels, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_anchors * 4, 1)

        # mmdet hands the RPN its recipes as nested dicts; read them here, once, so that
        # forward code never calls cfg.get() and a typo fails at build time.
        self.train_recipe = AnchorTrainRecipe.from_cfg(train_cfg, 'rpn_head.train_cfg')
        self.test_recipe = ProposalRecipe.from_cfg(test_cfg, 'rpn_head.test_cfg')

    def forward(self, x: tuple[Tensor, ...]) -> tuple[list[Tensor], list[Tensor]]:
        cls_scores, bbox_preds = [], []
        for feat in x:
            feat = F.relu(self.rpn_conv(feat))
            cls_scores.append(self.rpn_cls(feat))
            bbox_preds.append(self.rpn_reg(feat))
        return cls_scores, bbox_preds

    # ---- training -------------------------------------------------------------------------

    def loss(self, x: tuple[Tensor, ...], batch_data_samples: SampleList) -> dict:
        return self.loss_by_feat(*self(x), batch_data_samples)

    def loss_and_predict(self, x: tuple[Tensor, ...], batch_data_samples: SampleList,
                         proposal_recipe: ProposalRecipe) -> tuple[dict, list[InstanceData]]:
        cls_scores, bbox_preds = self(x)
        # One anchor grid serves the loss and the proposals of this step.
        anchors = self.prior_generator.grid_priors([tuple(c.shape[-2:]) for c in cls_scores],
                                                   device=cls_scores[0].device)
        losses = self.loss_by_feat(cls_scores, bbox_preds, batch_data_samples, anchors)
        metas = [s.metainfo for s in batch_data_samples]
        # The RoI loss must not reach the RPN through proposal coordinates (mmdet's approximate
        # joint training): proposals are computed from detached outputs.
        proposals = self.predict_by_feat([c.detach() for c in cls_scores],
                                         [b.detach() for b in bbox_preds], metas,
                                         proposal_recipe, anchors)
        return losses, proposals

    def loss_by_feat(self, cls_scores: list[Tensor], bbox_preds: list[Tensor],
                     batch_data_samples: SampleList,
                     mlvl_anchors: list[Tensor] | None = None) -> dict:
        """``mlvl_anchors``: the L anchor grids of these maps, when the caller has them."""
        if self.train_recipe is None:
            raise RuntimeError('RPNHead.loss needs a train_cfg with an assigner (and a sampler)')
        gts, gts_ignore, metas = unpack_gt_instances(batch_data_samples)
        featmap_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        device = cls_scores[0].device
        if mlvl_anchors is None:
            mlvl_anchors = self.prior_generator.grid_priors(featmap_sizes, device=device)
        anchors = torch.cat(mlvl_anchors)                                 # (N, 4)
        valid = torch.stack([
            torch.cat(self.prior_generator.valid_flags(featmap_sizes, meta.get(
                'pad_shape', meta['batch_input_shape']), device)) for meta in metas])
        targets = anchor_targets(anchors, valid, gts, gts_ignore, self.train_recipe,
                                 self.bbox_coder, self.num_classes, self.reg_decoded_bbox,
                                 class_agnostic=True)
        logits = flatten_levels(cls_scores, self.cls_out_channels)       # (B, N, 1 or 2)
        deltas = flatten_levels(bbox_preds, 4)                           # (B, N, 4)
        loss_cls = self.loss_cls(logits.reshape(-1, self.cls_out_channels),
                                 targets.labels.reshape(-1), targets.label_weights.reshape(-1),
                                 reduction_override='none')
        if self.reg_decoded_bbox:
            deltas = self.bbox_coder.decode(anchors[None].expand_as(deltas), deltas)
        loss_bbox = self.loss_bbox(deltas, targets.bbox_targets, targets.bbox_weights,
                                   reduction_override='none').sum(-1)   # (B, N)
        # mmdet reports one term per level, each normalised by the sampled anchors of ALL levels.
        sizes = [c.shape[-2] * c.shape[-1] * self.prior_generator.num_base_priors[i]
                 for i, c in enumerate(cls_scores)]
        norm = max(targets.avg_factor, 1.0)
        loss_cls = loss_cls.reshape(logits.shape[0], -1)                  # (B, N)
        return dict(
            loss_rpn_cls=[part.sum() / norm for part in loss_cls.split(sizes, dim=1)],
            loss_rpn_bbox=[part.sum() / norm for part in loss_bbox.split(sizes, dim=1)])

    # ---- inference ------------------------------------------------------------------------

    def predict(self, x: tuple[Tensor, ...], batch_data_samples: SampleList
                ) -> list[InstanceData]:
        if self.test_recipe is None:
            raise RuntimeError('RPNHead.predict needs a test_cfg (nms_pre, max_per_img, nms)')
        metas = [s.metainfo for s in batch_data_samples]
        return self.predict_by_feat(*self(x), metas, self.test_recipe)

    def predict_by_feat(self, cls_scores: list[Tensor], bbox_preds: list[Tensor],
                        batch_img_metas: list[dict], recipe: ProposalRecipe,
                        mlvl_anchors: list[Tensor] | None = None) -> list[InstanceData]:
        """Per level the top ``nms_pre`` anchors, decoded and clipped to each image; then
        ``select_detections``: NMS inside each (image, level), top ``max_per_img`` per image.

        Anchors stay float32 even under mixed precision: fp16 cannot hold pixel coordinates
        above 2048 exactly.
        """
        device = cls_scores[0].device
        anchors = mlvl_anchors if mlvl_anchors is not None else self.prior_generator.grid_priors(
            [tuple(c.shape[-2:]) for c in cls_scores], device=device)
        num_images = cls_scores[0].shape[0]
        scores, deltas, priors, levels = [], [], [], []
        for level, (logits, reg, anc) in enumerate(zip(cls_scores, bbox_preds, anchors)):
            logits = logits.permute(0, 2, 3, 1).reshape(num_images, -1, self.cls_out_channels)
            # Foreground is class 0; with softmax, index 1 is background.
            score = (logits[..., 0].sigmoid() if self.use_sigmoid_cls
                     else logits.softmax(-1)[..., 0])
            k = at_most(recipe.nms_pre, score, 1) if recipe.nms_pre > 0 else score.shape[1]
            top, idx = score.topk(k, dim=1)                              # (B, k)
            reg = reg.permute(0, 2, 3, 1).reshape(num_images, -1, 4)      # (B, H*W*A, 4)
            scores.append(top)
            deltas.append(reg.gather(1, idx[..., None].expand(-1, -1, 4)))
            priors.append(anc[idx])                                      # (B, k, 4)
            levels.append(torch.full_like(idx[0], level))
        # clipped to each image's own (h, w): the batch padding is not image
        img_shapes = meta_pairs(batch_img_metas, 'img_shape', device, torch.long)
        boxes = self.bbox_coder.decode(torch.cat(priors, 1), torch.cat(deltas, 1),
                                       max_shape=img_shapes)             # (B, M, 4)
        scores = torch.cat(scores, 1)                                    # (B, M)
        keep = scores >= recipe.score_thr                                # torchvision's rule
        image_ids = torch.arange(num_images, device=device)[:, None].expand_as(scores)
        candidates = Candidates(
            boxes=boxes[keep], scores=scores[keep], labels=torch.zeros_like(image_ids[keep]),
            image_ids=image_ids[keep], groups=torch.cat(levels).expand_as(scores)[keep],
            num_groups=len(cls_scores))
        original = (size_scales(batch_img_metas, device) if recipe.size_frame == 'original'
                    else None)
        return select_detections(candidates, num_images, recipe.nms, recipe.max_per_img,
                                 recipe.min_bbox_size, original_scales=original)
