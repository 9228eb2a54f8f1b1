"""``DetDataPreprocessor``: a batch of pipeline outputs -> one normalised, padded tensor.

In: dict(inputs=B uint8 tensors (3, H_i, W_i), data_samples=B DetDataSample).
Out: dict(inputs=(B, 3, H_pad, W_pad) float, data_samples) where H_pad, W_pad are the largest
image sides rounded up to ``pad_size_divisor``; every sample's metainfo gets
``batch_input_shape`` = (H_pad, W_pad) and ``pad_shape`` = its own size rounded up to the
divisor. Padding is bottom/right, so box coordinates are unchanged. In training, the
``batch_augments`` (e.g. ``BatchFixedSizePad``) then run in order on the batch and may change
the inputs and those metainfo keys again.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from mmengine.model import ImgDataPreprocessor
from torch import nn

from rcnn_det.registry import MODELS

from ..recipes import build_or_pass


@MODELS.register_module()
class DetDataPreprocessor(ImgDataPreprocessor):
    """mmdetection's DetDataPreprocessor: mmengine's image preprocessing plus detection meta.

    ``batch_augments``: configs (or built modules) of batch augmentations from the ``MODELS``
    registry, kept in ``self.batch_augments`` (an ``nn.ModuleList``, None without any), applied
    in training only, after mask padding, as in mmdet.
    """

    def __init__(self, mean=None, std=None, pad_size_divisor: int = 1, pad_value: float = 0,
                 pad_mask: bool = False, mask_pad_value: int = 0, pad_seg: bool = False,
                 seg_pad_value: int = 255, bgr_to_rgb: bool = False, rgb_to_bgr: bool = False,
                 boxtype2tensor: bool = True, non_blocking: bool = False,
                 batch_augments: list[dict] | None = None) -> None:
        super().__init__(mean=mean, std=std, pad_size_divisor=pad_size_divisor,
                         pad_value=pad_value, bgr_to_rgb=bgr_to_rgb, rgb_to_bgr=rgb_to_bgr,
                         non_blocking=non_blocking)
        self.batch_augments = None
        if batch_augments is not None:
            self.batch_augments = nn.ModuleList(
                [build_or_pass(MODELS, aug) for aug in batch_augments])
        if pad_seg:
            raise NotImplementedError('DetDataPreprocessor: pad_seg is not supported')
        self.pad_mask = pad_mask
        self.mask_pad_value = mask_pad_value

    def forward(self, data: dict, training: bool = False) -> dict:
        pad_shapes = [self._own_pad_shape(img.shape[-2:]) for img in data['inputs']]
        data = super().forward(data, training)
        inputs, samples = data['inputs'], data['data_samples']
        if samples is not None:
            batch_input_shape = tuple(inputs.shape[-2:])
            for sample, pad_shape in zip(samples, pad_shapes):
                sample.set_metainfo({'batch_input_shape': batch_input_shape,
                                     'pad_shape': pad_shape})
            if self.pad_mask and training:
                self.pad_gt_masks(samples, batch_input_shape)
        if training and self.batch_augments is not None:
            for batch_aug in self.batch_augments:
                inputs, samples = batch_aug(inputs, samples)
        return dict(inputs=inputs, data_samples=samples)

    def _own_pad_shape(self, hw) -> tuple[int, int]:
        d = self.pad_size_divisor
        return (int(math.ceil(hw[0] / d)) * d, int(math.ceil(hw[1] / d)) * d)

    def pad_gt_masks(self, samples, batch_input_shape: tuple[int, int]) -> None:
        """Pad each (G, H, W) gt mask tensor bottom/right to the batch input shape."""
        for sample in samples:
            if 'masks' not in sample.gt_instances:
                continue
            masks = sample.gt_instances.masks
            pad_h = batch_input_shape[0] - masks.shape[-2]
            pad_w = batch_input_shape[1] - masks.shape[-1]
            sample.gt_instances.masks = F.pad(masks, (0, pad_w, 0, pad_h),
                                              value=self.mask_pad_value)
