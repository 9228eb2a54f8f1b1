"""Geometric transforms that keep boxes and instance masks aligned with the image.

mmcv's ``Resize``, ``RandomFlip`` and ``Pad`` move the image (and boxes, seg maps), but know
nothing of ``gt_masks``; these subclasses, registered under the same names in rcnn_det's scope,
add the masks and keep ``gt_bboxes`` float32. mmcv's ``RandomChoiceResize``/``RandomResize``
build whichever ``Resize`` the current default scope resolves, i.e. this one under 'rcnn_det'.

Shape letters: N instances, H x W the image before, h x w after.
"""
from __future__ import annotations

import numpy as np
from mmcv.transforms import Pad as MMCVPad
from mmcv.transforms import RandomFlip as MMCVRandomFlip
from mmcv.transforms import Resize as MMCVResize

from rcnn_det.registry import TRANSFORMS


def resize_masks(masks: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """(N, H, W) -> (N, h, w) by nearest neighbour at pixel centres.

    Output pixel i samples input pixel floor((i + 0.5) * H / h): the same centre alignment as
    cv2's bilinear image resize, so masks stay on the image (cv2's INTER_NEAREST, which mmdet
    uses, samples floor(i * H / h) and drifts up to one pixel towards the origin).
    """
    _, height, width = masks.shape
    out_h, out_w = out_shape
    rows = np.minimum(((np.arange(out_h) + 0.5) * height / out_h).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * width / out_w).astype(np.int64), width - 1)
    return masks[:, rows[:, None], cols[None, :]]


def flip_masks(masks: np.ndarray, direction: str) -> np.ndarray:
    """Mirror (N, H, W) masks; returns a contiguous copy (torch cannot wrap negative strides)."""
    axes = dict(horizontal=(2,), vertical=(1,), diagonal=(1, 2))
    if direction not in axes:
        raise ValueError(f'flip_masks: unknown direction {direction!r}')
    return np.ascontiguousarray(np.flip(masks, axis=axes[direction]))


def pad_masks(masks: np.ndarray, out_shape: tuple[int, int], pad_val: int = 0) -> np.ndarray:
    """(N, H, W) -> (N, h, w), h >= H, w >= W, padded at the bottom and right like the image."""
    num, height, width = masks.shape
    padded = np.full((num, *out_shape), pad_val, dtype=masks.dtype)
    padded[:, :height, :width] = masks
    return padded


@TRANSFORMS.register_module()
class Resize(MMCVResize):
    """mmcv's ``Resize`` (same arguments) that also resizes ``gt_masks`` (N, H, W).

    Sets ``img_shape`` (h, w), ``scale`` and ``scale_factor`` = (w_scale, h_scale), mmdet's
    order. ``gt_bboxes`` (N, 4) xyxy are multiplied by the scale factor, stay float32, and are
    clipped to the new image when ``clip_object_border``.
    """

    def _resize_bboxes(self, results: dict) -> None:
        if results.get('gt_bboxes') is None:
            return
        w_scale, h_scale = results['scale_factor']
        bboxes = results['gt_bboxes'] * np.array([w_scale, h_scale, w_scale, h_scale],
                                                 dtype=np.float32)
        if self.clip_object_border:
            height, width = results['img_shape']
            bboxes[:, 0::2] = bboxes[:, 0::2].clip(0, width)
            bboxes[:, 1::2] = bboxes[:, 1::2].clip(0, height)
        results['gt_bboxes'] = bboxes

    def transform(self, results: dict) -> dict:
        results = super().transform(results)
        if results.get('gt_masks') is not None:
            results['gt_masks'] = resize_masks(results['gt_masks'], results['img_shape'])
        return results


@TRANSFORMS.register_module()
class RandomFlip(MMCVRandomFlip):
    """mmcv's ``RandomFlip`` (same arguments: ``prob``, ``direction``) that also flips
    ``gt_masks``. Sets ``flip`` (bool) and ``flip_direction`` (str or None); boxes are mirrored
    inside ``img_shape`` (x -> W - x), so flipping twice is the identity.
    """

    def _flip(self, results: dict) -> None:
        super()._flip(results)
        if results.get('gt_masks') is not None:
            results['gt_masks'] = flip_masks(results['gt_masks'], results['flip_direction'])


@TRANSFORMS.register_module()
class Pad(MMCVPad):
    """mmcv's ``Pad`` (same arguments) that also pads ``gt_masks`` with ``pad_val['masks']``
    (default 0) to ``pad_shape``. Boxes need no change: padding is at the bottom and right.
    """

    def transform(self, results: dict) -> dict:
        results = super().transform(results)
        if results.get('gt_masks') is not None:
            results['gt_masks'] = pad_masks(results['gt_masks'], results['pad_shape'][:2],
                                            self.pad_val.get('masks', 0))
        return results
