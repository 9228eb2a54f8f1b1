"""``FCNMaskHead``: a small FCN on each positive RoI's features -> one mask per class.

Shape letters: P RoIs of the batch (positives in training, detections at test), C classes,
S_in the RoI feature size (14), S the mask size (28 = 2 * S_in with the default deconv).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS
from rcnn_det.structures import crop_and_resize_masks

from ...recipes import build_or_pass
from ...task_modules.samplers import SamplingResult

DEFAULT_MASK_LOSS = dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0)
UPSAMPLE_TYPES = ('deconv', 'nearest', 'bilinear')


@dataclass(frozen=True)
class MaskTargetRecipe:
    """How ground-truth masks become RoI targets (mmdet's ``train_cfg.rcnn`` mask keys)."""
    mask_size: int = 28             # S: targets are S x S crops of each RoI's gt mask
    soft_mask_target: bool = False  # False: binarise the crop at 0.5 (mmdet); True: keep [0, 1]
    mask_target_aligned: bool = True  # RoIAlign's half-pixel alignment (mmdet; torchvision: no)


def build_upsample(upsample_cfg: dict | None, channels: int) -> nn.Module | None:
    """mmdet's ``upsample_cfg``: 'deconv' (learned, stride = scale), 'nearest', 'bilinear'."""
    if upsample_cfg is None:
        return None
    cfg = dict(upsample_cfg)
    kind, scale = cfg.pop('type', None), int(cfg.pop('scale_factor', 2))
    if kind not in UPSAMPLE_TYPES:
        raise ValueError(f'FCNMaskHead.upsample_cfg: type must be one of {UPSAMPLE_TYPES} '
                         f"(carafe needs compiled mmcv ops), got {kind!r}")
    if cfg:
        raise KeyError(f'FCNMaskHead.upsample_cfg: unknown keys {sorted(cfg)}')
    if kind == 'deconv':
        return nn.ConvTranspose2d(channels, channels, scale, stride=scale)
    return nn.Upsample(scale_factor=scale, mode=kind,
                       align_corners=False if kind == 'bilinear' else None)


@MODELS.register_module()
class FCNMaskHead(BaseModule):
    """mmdetection's FCNMaskHead: ``num_convs`` 3x3 convs, 2x upsampling, 1x1 class logits.

    forward(x (P, in_channels, S_in, S_in)) -> mask logits (P, C or 1, S, S)
    """

    def __init__(self, num_convs: int = 4, roi_feat_size: int = 14, in_channels: int = 256,
                 conv_kernel_size: int = 3, conv_out_channels: int = 256, num_classes: int = 80,
                 class_agnostic: bool = False,
                 upsample_cfg: dict | None = dict(type='deconv', scale_factor=2),
                 conv_cfg: dict | None = None, norm_cfg: dict | None = None,
                 predictor_cfg: dict = dict(type='Conv'), loss_mask=DEFAULT_MASK_LOSS,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if dict(predictor_cfg).get('type') not in ('Conv', 'Conv2d'):
            raise ValueError("FCNMaskHead: predictor_cfg must be dict(type='Conv')")
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.roi_feat_size = roi_feat_size
        self.loss_mask = build_or_pass(MODELS, loss_mask)
        self.convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_out_channels, conv_out_channels,
                       conv_kernel_size, padding=(conv_kernel_size - 1) // 2,
                       conv_cfg=conv_cfg, norm_cfg=norm_cfg)
            for i in range(num_convs))
        channels = conv_out_channels if num_convs > 0 else in_channels
        self.upsample = build_upsample(upsample_cfg, channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv_logits = nn.Conv2d(channels, 1 if class_agnostic else num_classes, 1)

    def init_weights(self) -> None:
        """mmdet's: Kaiming (fan_out) on the learned upsampling and the logits, zero biases."""
        super().init_weights()
        for layer in (self.upsample, self.conv_logits):
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(layer.weight, mode='fan_out', nonlinearity='relu')
                nn.init.constant_(layer.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x)
        if self.upsample is not None:
            x = self.upsample(x)
            if isinstance(self.upsample, nn.ConvTranspose2d):
                x = self.relu(x)
        return self.conv_logits(x)

    # ---- training -------------------------------------------------------------------------

    def get_targets(self, sampling_results: list[SamplingResult],
                    batch_gt_instances: list[InstanceData], recipe: MaskTargetRecipe) -> Tensor:
        """(P, S, S) targets of every positive RoI, images in order, positives as sampled."""
        targets = []
        for res, gt in zip(sampling_results, batch_gt_instances):
            crops = crop_and_resize_masks(gt.masks, res.pos_priors, res.pos_assigned_gt_inds,
                                          recipe.mask_size, recipe.mask_target_aligned)
            targets.append(crops if recipe.soft_mask_target else (crops >= 0.5).to(crops.dtype))
        return torch.cat(targets)

    def loss_and_target(self, mask_preds: Tensor, sampling_results: list[SamplingResult],
                        batch_gt_instances: list[InstanceData], recipe: MaskTargetRecipe
                        ) -> tuple[dict, Tensor]:
        """dict(loss_mask): BCE of each positive RoI's own gt class channel (or the only one)."""
        targets = self.get_targets(sampling_results, batch_gt_instances, recipe)
        if mask_preds.shape[-2:] != targets.shape[-2:]:
            raise ValueError(f'FCNMaskHead predicts {tuple(mask_preds.shape[-2:])} masks but '
                             f'train_cfg.rcnn.mask_size is {recipe.mask_size}: make mask_size '
                             'the RoI feature size times the upsampling scale factor')
        if mask_preds.shape[0] == 0:
            return dict(loss_mask=mask_preds.sum() * 0), targets   # keeps the graph for DDP
        labels = torch.cat([res.pos_gt_labels for res in sampling_results])
        if self.class_agnostic:
            labels = torch.zeros_like(labels)
        return dict(loss_mask=self.loss_mask(mask_preds, targets, labels)), targets

    # ---- inference ------------------------------------------------------------------------

    def predict_by_feat(self, mask_preds: Tensor, results_list: list[InstanceData]
                        ) -> list[InstanceData]:
        """Each detection's mask probabilities, of its own class (or the only channel).

        Args:
            mask_preds: (sum D_i, C or 1, S, S) logits of every image's detections in order.
            results_list: per image InstanceData(bboxes (D_i, 4) in the network input's frame,
                scores, labels).
        Returns:
            the same InstanceData with ``mask_probs`` (D_i, S, S), which the detector pastes
            into the image (``post_processing.to_original_image``).
        """
        per_image = mask_preds.split([res.labels.shape[0] for res in results_list])  # traceable
        for preds, res in zip(per_image, results_list):
            channels = torch.zeros_like(res.labels) if self.class_agnostic else res.labels
            res.mask_probs = preds[torch.arange(preds.shape[0], device=preds.device),
                                   channels].sigmoid()
        return results_list
