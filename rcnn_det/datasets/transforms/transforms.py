"""Geometric transforms that keep boxes and instance masks aligned with the image.

mmcv's ``Resize``, ``RandomFlip`` and ``Pad`` move the image (and boxes, seg maps), but know
nothing of ``gt_masks``; these subclasses, registered under the same names in rcnn_det's scope,
add the masks and keep ``gt_bboxes`` float32. mmcv's ``RandomChoiceResize`` builds whichever
``Resize`` the current default scope resolves, i.e. this one under 'rcnn_det'; ``RandomResize``
(large-scale jitter) is registered here so that it builds this ``Resize`` in any scope.
``RandomCrop`` is mmdetection 3.x's (mmcv has none that knows boxes); ``TorchvisionResize``
is torchvision's detection resize, for configs that reproduce a torchvision model.

Shape letters: N instances, H x W the image before, h x w after.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.transforms import BaseTransform
from mmcv.transforms import Pad as MMCVPad
from mmcv.transforms import RandomFlip as MMCVRandomFlip
from mmcv.transforms import RandomResize as MMCVRandomResize
from mmcv.transforms import Resize as MMCVResize
from mmcv.transforms.utils import cache_randomness
from mmengine.registry import DefaultScope

from rcnn_det.registry import TRANSFORMS


def nearest_source_indices(in_size: int, out_size: int) -> np.ndarray:
    """(out_size,) int64: the input pixel that cv2's INTER_NEAREST copies to each output pixel.

    Output pixel i reads input pixel floor(i * (1 / (out_size / in_size))), clamped to the last
    one, computed in float64 in exactly this order, as OpenCV's ``resizeNN`` does (its scale is
    ``1. / fx`` with ``fx = out_size / in_size``). The order matters: the exact rational
    floor(i * in_size / out_size) differs from cv2 where i * in_size / out_size is an integer
    that float64 lands just below (e.g. 2 -> 98 px: i = 49 gives 0.999..., so pixel 0, not 1).
    """
    inv_scale = 1.0 / (out_size / in_size)
    sources = np.floor(np.arange(out_size) * inv_scale).astype(np.int64)
    return np.minimum(sources, in_size - 1)


def centre_source_indices(in_size: int, out_size: int) -> np.ndarray:
    """(out_size,) int64: the input pixel under each output pixel's centre,
    floor((i + 0.5) * in_size / out_size), the alignment of the bilinearly resized image."""
    sources = ((np.arange(out_size) + 0.5) * in_size / out_size).astype(np.int64)
    return np.minimum(sources, in_size - 1)


def resize_masks(masks: np.ndarray, out_shape: tuple[int, int],
                 align_centres: bool = False) -> np.ndarray:
    """(N, H, W) -> (N, h, w) by nearest neighbour.

    Default, pixel for pixel as mmdet's masks: output pixel (i, j) copies input pixel
    (floor(i * H / h), floor(j * W / w)) (float64, see ``nearest_source_indices``), cv2's
    INTER_NEAREST, which mmdet's ``BitmapMasks.resize`` and ``rescale`` use through mmcv's
    ``imresize(interpolation='nearest')``. That samples each output pixel's top-left corner, so
    a mask drifts by up to one input pixel towards the origin relative to the bilinearly
    resized image. ``align_centres`` samples under each output pixel's centre instead
    (``centre_source_indices``), on the image.
    """
    _, height, width = masks.shape
    out_h, out_w = out_shape
    sources = centre_source_indices if align_centres else nearest_source_indices
    rows, cols = sources(height, out_h), sources(width, out_w)        # (h,), (w,)
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


def mask_tight_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) masks -> (N, 4) float32 xyxy boxes around each mask's pixels.

    x2/y2 are exclusive (last index + 1), an empty mask gives [0, 0, 0, 0]: mmdet's
    ``BitmapMasks.get_bboxes``.
    """
    _, height, width = masks.shape
    cols, rows = masks.any(axis=1), masks.any(axis=2)           # (N, W), (N, H)
    boxes = np.stack([cols.argmax(1), rows.argmax(1),
                      width - cols[:, ::-1].argmax(1), height - rows[:, ::-1].argmax(1)], axis=1)
    boxes[~cols.any(axis=1)] = 0
    return boxes.astype(np.float32)


@TRANSFORMS.register_module()
class Resize(MMCVResize):
    """mmcv's ``Resize`` (same arguments) that also resizes ``gt_masks`` (N, H, W) to
    ``img_shape`` with ``resize_masks``.

    Sets ``img_shape`` (h, w), ``scale`` and ``scale_factor`` = (w_scale, h_scale), mmdet's
    order. ``gt_bboxes`` (N, 4) xyxy are multiplied by the scale factor, stay float32, and are
    clipped to the new image when ``clip_object_border``.

    Args (beyond mmcv's):
        mask_align_centres: False (mmdetection's masks: cv2's INTER_NEAREST, which shifts a
            mask by up to one pixel towards the origin); True samples each mask pixel under
            its centre, aligned with the image. rcnn_det's Mask R-CNN demo uses True: segm mAP
            0.820 -> 0.846 (bbox 0.816 -> 0.817), same seeds, 2-core CPU run.
    """

    def __init__(self, *args, mask_align_centres: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mask_align_centres = mask_align_centres

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
            results['gt_masks'] = resize_masks(results['gt_masks'], results['img_shape'],
                                               self.mask_align_centres)
        return results


def _int_pair(value: object) -> tuple[int, int] | None:
    """(a, b) of positive ints from a tuple or list (configs read from json/yaml hold lists);
    None when ``value`` is not such a pair."""
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                    for v in value)):
        return int(value[0]), int(value[1])
    return None


@TRANSFORMS.register_module()
class RandomResize(MMCVRandomResize):
    """mmcv's ``RandomResize`` (same arguments, same ``np.random`` draws) resizing through
    rcnn_det's ``Resize``, so ``gt_masks`` and ``gt_bboxes`` follow the image.

    The target scale (w, h) of each image:
        scale=(w, h), ratio_range=(lo, hi): r uniform in [lo, hi), (int(w * r), int(h * r));
            large-scale jitter is scale=(1024, 1024), ratio_range=(0.1, 2.0)
        scale=[(w1, h1), (w2, h2)]: w uniform int in [min(w1, w2), max(w1, w2)], h likewise
    then ``Resize(scale=target, **resize_kwargs)``: with ``keep_ratio=True`` the image is scaled
    by min(long target / long side, short target / short side).

    mmcv builds ``resize_type`` in whatever default scope is current, which without rcnn_det's
    is mmcv's ``Resize``: masks would keep the old size. This one always builds from rcnn_det's
    registry. Pairs may be lists (mmcv demands tuples); a bad ``scale`` or ``ratio_range``, or a
    ``ratio_range`` with the two-scale form (mmcv ignores it there), raises ValueError.
    """

    def __init__(self, scale: tuple[int, int] | list,
                 ratio_range: tuple[float, float] | None = None, resize_type: str = 'Resize',
                 **resize_kwargs) -> None:
        single, pair = _int_pair(scale), None
        if single is None and isinstance(scale, (tuple, list)) and len(scale) == 2:
            pair = [_int_pair(s) for s in scale]
        if single is None and (pair is None or None in pair):
            raise ValueError(f'RandomResize: scale must be (w, h) or [(w1, h1), (w2, h2)] of '
                             f'positive ints, got {scale!r}')
        if single is not None:
            if (ratio_range is None or len(ratio_range) != 2
                    or not 0 < ratio_range[0] <= ratio_range[1]):
                raise ValueError(f'RandomResize: scale={scale!r} needs ratio_range=(lo, hi) with '
                                 f'0 < lo <= hi, got {ratio_range!r}')
            ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        elif ratio_range is not None:
            raise ValueError(f'RandomResize: ratio_range={ratio_range!r} has no meaning with the '
                             f'two-scale form scale={scale!r} (the scale is drawn between them)')
        self.scale = single if single is not None else pair  # mmcv tells the forms by type
        self.ratio_range = ratio_range
        self.resize_cfg = dict(type=resize_type, **resize_kwargs)
        with DefaultScope.overwrite_default_scope('rcnn_det'):
            self.resize = TRANSFORMS.build({'scale': 0, **self.resize_cfg})


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


CROP_TYPES = ('absolute', 'absolute_range', 'relative', 'relative_range')


def _check_crop_size(crop_size: tuple | list, crop_type: str) -> tuple:
    """Validate mmdet's ``crop_size`` for ``crop_type``; returns it as a 2-tuple."""
    if crop_type not in CROP_TYPES:
        raise ValueError(f'RandomCrop: crop_type must be one of {CROP_TYPES}, got {crop_type!r}')
    if isinstance(crop_size, (str, bytes)) or np.ndim(crop_size) != 1 or len(crop_size) != 2:
        raise ValueError(f'RandomCrop: crop_size must be a pair of numbers, got {crop_size!r}')
    first, second = crop_size
    if crop_type.startswith('absolute'):
        meaning = '(min, max) side in px' if crop_type == 'absolute_range' else '(h, w) in px'
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                   for v in crop_size):
            raise ValueError(f'RandomCrop: crop_size must be positive ints {meaning} for '
                             f'crop_type={crop_type!r}, got {crop_size!r}')
        if crop_type == 'absolute_range' and first > second:
            raise ValueError(f'RandomCrop: crop_size {meaning} needs min <= max for '
                             f"crop_type='absolute_range', got {crop_size!r}")
    elif not all(isinstance(v, (int, float, np.number)) and 0 < v <= 1 for v in crop_size):
        raise ValueError(f'RandomCrop: crop_size must be two fractions in (0, 1] of (h, w) for '
                         f'crop_type={crop_type!r}, got {crop_size!r}')
    return (first, second)


@TRANSFORMS.register_module()
class RandomCrop(BaseTransform):
    """mmdetection 3.x's ``RandomCrop``: a random window of the image, boxes and masks.

    The crop size (h, w), at most the image's, comes from ``crop_type``:
        'absolute':       ``crop_size`` = (h, w) px
        'absolute_range': h and w each uniform in ints [crop_size[0], crop_size[1]]
        'relative':       ``crop_size`` = (h, w) fractions of the image's sides
        'relative_range': fractions uniform in [crop_size[i], 1]
    The window's top-left corner is uniform in [0, H - h] x [0, W - w]. Random draws use
    ``np.random`` in mmdet's order, so mmengine's seed gives the crops mmdet gives.

    Crops ``img`` (view), ``gt_masks`` (N, H, W) -> (K, h, w) and ``gt_seg_map``; sets
    ``img_shape`` (h, w). Boxes are shifted into the window and clipped to it when
    ``bbox_clip_border``; a box is kept (with its label, mask and ignore flag) when its part
    inside the window has positive width and height, mmdet's ``is_inside`` test. (mmdet also
    keeps a box that had zero width or height before the crop; rcnn_det drops it.)

    Args:
        allow_negative_crop: keep a window without any box; otherwise the transform returns
            None and mmengine's dataset draws another image, as in mmdet.
        recompute_bbox: replace each kept box by the tight box of its cropped mask.
        bbox_clip_border: clip the shifted boxes to the window.
    """

    def __init__(self, crop_size: tuple, crop_type: str = 'absolute',
                 allow_negative_crop: bool = False, recompute_bbox: bool = False,
                 bbox_clip_border: bool = True) -> None:
        self.crop_size = _check_crop_size(crop_size, crop_type)
        self.crop_type = crop_type
        self.allow_negative_crop = allow_negative_crop
        self.recompute_bbox = recompute_bbox
        self.bbox_clip_border = bbox_clip_border

    @cache_randomness
    def _get_crop_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the image -> (h, w) of the window, h <= H, w <= W."""
        height, width = image_size
        if self.crop_type == 'absolute':
            return min(self.crop_size[0], height), min(self.crop_size[1], width)
        if self.crop_type == 'absolute_range':
            low, high = self.crop_size
            return (np.random.randint(min(height, low), min(height, high) + 1),
                    np.random.randint(min(width, low), min(width, high) + 1))
        fractions = self.crop_size
        if self.crop_type == 'relative_range':
            low = np.asarray(self.crop_size, dtype=np.float32)  # float32 as mmdet, same rounding
            fractions = low + np.random.rand(2) * (1 - low)
        # mmdet rounds half up; a window never has a zero side, even on a tiny image.
        return max(int(height * fractions[0] + 0.5), 1), max(int(width * fractions[1] + 0.5), 1)

    @cache_randomness
    def _rand_offset(self, margin: tuple[int, int]) -> tuple[int, int]:
        """(H - h, W - w) -> (top, left), each uniform in [0, margin]."""
        return np.random.randint(0, margin[0] + 1), np.random.randint(0, margin[1] + 1)

    def _shift_boxes(self, boxes: np.ndarray, window: tuple[int, int, int, int]
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) xyxy image boxes -> (N, 4) boxes in the window and (N,) bool "keep"."""
        left, top, right, bottom = window
        shifted = boxes - np.array([left, top, left, top], dtype=boxes.dtype)
        clipped = shifted.copy()
        clipped[:, 0::2] = clipped[:, 0::2].clip(0, right - left)
        clipped[:, 1::2] = clipped[:, 1::2].clip(0, bottom - top)
        keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        return (clipped if self.bbox_clip_border else shifted), keep

    def transform(self, results: dict) -> dict | None:
        """Crop ``results`` in place; None when no box is left and negative crops are not
        allowed (nothing is changed then)."""
        height, width = results['img'].shape[:2]
        crop_h, crop_w = self._get_crop_size((height, width))
        top, left = self._rand_offset((height - crop_h, width - crop_w))
        window = (left, top, left + crop_w, top + crop_h)
        kept = None  # (K,) indices of the instances kept; None: no boxes, keep every mask
        if results.get('gt_bboxes') is not None:
            boxes, inside = self._shift_boxes(results['gt_bboxes'], window)
            if not inside.any() and not self.allow_negative_crop:
                return None
            kept = np.flatnonzero(inside)
            results['gt_bboxes'] = boxes[kept]
            for key in ('gt_bboxes_labels', 'gt_ignore_flags'):
                if results.get(key) is not None:
                    results[key] = results[key][kept]
        rows, cols = slice(top, top + crop_h), slice(left, left + crop_w)
        results['img'] = results['img'][rows, cols]
        results['img_shape'] = results['img'].shape[:2]
        if results.get('gt_seg_map') is not None:
            results['gt_seg_map'] = results['gt_seg_map'][rows, cols]
        if results.get('gt_masks') is not None:
            masks = results['gt_masks']
            kept = np.arange(len(masks)) if kept is None else kept
            results['gt_masks'] = masks[kept, rows, cols]  # (K, h, w), a contiguous copy
            if self.recompute_bbox and results.get('gt_bboxes') is not None:
                results['gt_bboxes'] = mask_tight_boxes(results['gt_masks'])
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(crop_size={self.crop_size}, '
                f'crop_type={self.crop_type!r}, allow_negative_crop={self.allow_negative_crop}, '
                f'recompute_bbox={self.recompute_bbox}, '
                f'bbox_clip_border={self.bbox_clip_border})')


@TRANSFORMS.register_module()
class TorchvisionResize(BaseTransform):
    """torchvision's detection resize (``GeneralizedRCNNTransform.resize``), exactly.

    The image is scaled by s = min(min_size / short side, max_size / long side) to
    (floor(H * s), floor(W * s)) with ``torch.nn.functional.interpolate`` (bilinear,
    ``align_corners=False``, the scale recomputed from the output size) and stays float32, as in
    torchvision, which interpolates the float image (rcnn_det normalises after resizing; both
    are affine per channel, so the order does not matter). Boxes are multiplied by the actual
    ratios (w / W, h / H), masks resized by ``interpolate``'s nearest mode, as torchvision does.

    Args:
        min_size: target short side; a sequence means one is drawn at random per image
            (torchvision's multi-scale training), with ``np.random``.
        max_size: cap on the long side.

    Sets ``img_shape`` (h, w), ``scale`` (w, h), ``scale_factor`` (w / W, h / H) and
    ``keep_ratio`` like ``Resize``.
    """

    def __init__(self, min_size: int | list[int] = 800, max_size: int = 1333) -> None:
        sizes = [min_size] if isinstance(min_size, int) else list(min_size)
        if not sizes or any(not isinstance(s, int) or s <= 0 for s in sizes) or max_size <= 0:
            raise ValueError(f'TorchvisionResize: min_size must be a positive int or a list of '
                             f'them and max_size positive, got {min_size!r}, {max_size!r}')
        self.min_sizes = sizes
        self.max_size = max_size

    @cache_randomness
    def _choose_min_size(self) -> int:
        return self.min_sizes[np.random.randint(len(self.min_sizes))]

    def transform(self, results: dict) -> dict:
        img = results['img']
        height, width = img.shape[:2]
        scale = min(self._choose_min_size() / min(height, width),
                    self.max_size / max(height, width))
        tensor = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
        tensor = tensor.reshape(height, width, -1).permute(2, 0, 1)[None]
        resized = F.interpolate(tensor, scale_factor=scale, mode='bilinear',
                                recompute_scale_factor=True, align_corners=False)[0]
        out_h, out_w = resized.shape[-2:]
        results['img'] = resized.permute(1, 2, 0).numpy().reshape(out_h, out_w, *img.shape[2:])
        results['img_shape'] = (out_h, out_w)
        results['scale'] = (out_w, out_h)
        results['scale_factor'] = (out_w / width, out_h / height)
        results['keep_ratio'] = True
        if results.get('gt_bboxes') is not None:
            ratios = torch.tensor([out_w, out_h], dtype=torch.float32) / torch.tensor(
                [width, height], dtype=torch.float32)        # float32, as torchvision computes
            results['gt_bboxes'] = (torch.from_numpy(results['gt_bboxes']).float()
                                    * ratios.repeat(2)).numpy()
        if results.get('gt_masks') is not None:
            masks = torch.from_numpy(np.ascontiguousarray(results['gt_masks']))[:, None].float()
            masks = F.interpolate(masks, size=(out_h, out_w))[:, 0]
            results['gt_masks'] = masks.to(torch.uint8).numpy()
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(min_size={self.min_sizes}, max_size={self.max_size})')
