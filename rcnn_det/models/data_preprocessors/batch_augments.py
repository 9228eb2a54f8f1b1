"""Batch augmentations: ``DetDataPreprocessor(batch_augments=[...])`` runs them in training on
the padded, normalised batch, after its own padding (mmdetection 3.x's interface: a module
called as ``inputs, data_samples = aug(inputs, data_samples)``).

Shape letters: B images, G instances of one image, H x W the batch before, h x w after.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from torch import nn

from rcnn_det.registry import MODELS
from rcnn_det.structures import DetDataSample


def _pad_bottom_right(tensor: torch.Tensor, out_hw: tuple[int, int],
                      value: float) -> torch.Tensor:
    """Pad the last two dims of ``tensor`` at the bottom and right up to ``out_hw`` (no crop)."""
    pad_h = max(out_hw[0] - tensor.shape[-2], 0)
    pad_w = max(out_hw[1] - tensor.shape[-1], 0)
    if pad_h == 0 and pad_w == 0:
        return tensor
    return F.pad(tensor, (0, pad_w, 0, pad_h), value=value)


@MODELS.register_module()
class BatchFixedSizePad(nn.Module):
    """Pad a batch at the bottom and right to at least ``size`` (h, w), mmdetection 3.x's
    ``BatchFixedSizePad`` (LSJ configs: every batch becomes exactly 1024 x 1024).

    (B, 3, H, W) -> (B, 3, h, w), h = max(H, size[0]), w = max(W, size[1]); boxes are unchanged.
    Every sample's ``batch_input_shape`` and ``pad_shape`` become (h, w); ``gt_instances.masks``
    (G, H_i, W_i) are padded to (G, h, w) with ``pad_mask``, ``gt_sem_seg`` with ``pad_seg``. A
    batch already at least ``size`` is returned untouched, metainfo included, as in mmdet.
    (mmdet writes ``size`` into the metainfo even when only one side needed padding and the
    other is larger; here the metainfo is the tensor's actual size.)
    """

    def __init__(self, size: tuple[int, int], img_pad_value: float = 0, pad_mask: bool = False,
                 mask_pad_value: int = 0, pad_seg: bool = False,
                 seg_pad_value: int = 255) -> None:
        super().__init__()
        if (isinstance(size, (str, bytes)) or not hasattr(size, '__len__') or len(size) != 2
                or not all(isinstance(s, int) and s > 0 for s in size)):
            raise ValueError(f'BatchFixedSizePad: size must be (h, w) of positive ints, got '
                             f'{size!r}')
        self.size = (size[0], size[1])
        self.img_pad_value = img_pad_value
        self.pad_mask = pad_mask
        self.mask_pad_value = mask_pad_value
        self.pad_seg = pad_seg
        self.seg_pad_value = seg_pad_value

    def forward(self, inputs: torch.Tensor, data_samples: list[DetDataSample] | None = None
                ) -> tuple[torch.Tensor, list[DetDataSample] | None]:
        src_h, src_w = inputs.shape[-2:]
        out_hw = (max(src_h, self.size[0]), max(src_w, self.size[1]))
        if out_hw == (src_h, src_w):
            return inputs, data_samples
        inputs = _pad_bottom_right(inputs, out_hw, self.img_pad_value)
        for sample in data_samples or ():
            sample.set_metainfo({'batch_input_shape': out_hw, 'pad_shape': out_hw})
            if self.pad_mask and 'masks' in sample.gt_instances:
                sample.gt_instances.masks = _pad_bottom_right(sample.gt_instances.masks, out_hw,
                                                              self.mask_pad_value)
            if self.pad_seg and 'gt_sem_seg' in sample:
                sem_seg = _pad_bottom_right(sample.gt_sem_seg.sem_seg, out_hw, self.seg_pad_value)
                sample.gt_sem_seg = PixelData(sem_seg=sem_seg)
        return inputs, data_samples

    def extra_repr(self) -> str:
        return (f'size={self.size}, img_pad_value={self.img_pad_value}, '
                f'pad_mask={self.pad_mask}, mask_pad_value={self.mask_pad_value}, '
                f'pad_seg={self.pad_seg}, seg_pad_value={self.seg_pad_value}')
