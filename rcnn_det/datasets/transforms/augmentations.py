"""The instance-level steps of large-scale-jitter (LSJ) training: ``FilterAnnotations`` and
``CopyPaste`` (mmdetection 3.x's names, arguments and random draws).

Co-DINO's LSJ recipe (mmdetection ``projects/CO-DETR/configs/codino/
co_dino_5scale_r50_lsj_8xb2_1x_coco.py``) runs, per image, ``RandomResize`` (0.1x to 2x) ->
``RandomCrop`` (boxes recomputed from the cropped masks) -> ``FilterAnnotations`` -> flip ->
``Pad`` to a fixed size, then ``MultiImageMixDataset`` hands ``CopyPaste`` a second image that
went through the same steps, so both have the same size.

Data layout (``LoadAnnotations``): ``gt_bboxes`` (N, 4) float32 xyxy px, ``gt_bboxes_labels``
(N,) int64, ``gt_ignore_flags`` (N,) bool, ``gt_masks`` (N, H, W) uint8 {0, 1}.

Shape letters: N instances of the destination image, M pasted instances, H x W the image.
"""
from __future__ import annotations

import numpy as np
from mmcv.transforms import BaseTransform
from mmcv.transforms.utils import cache_randomness

from rcnn_det.registry import TRANSFORMS

from .transforms import mask_tight_boxes

# The per-instance keys that FilterAnnotations and CopyPaste keep in step (mmdet's list).
INSTANCE_KEYS = ('gt_bboxes', 'gt_bboxes_labels', 'gt_masks', 'gt_ignore_flags')


@TRANSFORMS.register_module()
class FilterAnnotations(BaseTransform):
    """Drop instances whose box or mask is too small, mmdetection 3.x's ``FilterAnnotations``.

    An instance is kept when it passes every enabled test:
        by_box:  width > min_gt_bbox_wh[0] and height > min_gt_bbox_wh[1] (strictly)
        by_mask: at least ``min_gt_mask_area`` mask pixels
    ``gt_bboxes``, ``gt_bboxes_labels``, ``gt_masks`` and ``gt_ignore_flags`` are filtered alike.
    An image that has no instance to begin with is returned unchanged.

    Args:
        keep_empty: mmdet's name, whose meaning is the reverse of what it reads: True returns
            None when the filter removes every instance (mmengine's dataset then draws another
            image, as in mmdet); False keeps the image with zero instances.
    """

    def __init__(self, min_gt_bbox_wh: tuple[float, float] = (1, 1), min_gt_mask_area: int = 1,
                 by_box: bool = True, by_mask: bool = False, keep_empty: bool = True) -> None:
        if not (by_box or by_mask):
            raise ValueError('FilterAnnotations: by_box and by_mask are both False; enable at '
                             'least one test')
        if (isinstance(min_gt_bbox_wh, (str, bytes)) or np.ndim(min_gt_bbox_wh) != 1
                or len(min_gt_bbox_wh) != 2):
            raise ValueError(f'FilterAnnotations: min_gt_bbox_wh must be (min_w, min_h), got '
                             f'{min_gt_bbox_wh!r}')
        self.min_gt_bbox_wh = tuple(min_gt_bbox_wh)
        self.min_gt_mask_area = min_gt_mask_area
        self.by_box = by_box
        self.by_mask = by_mask
        self.keep_empty = keep_empty

    def transform(self, results: dict) -> dict | None:
        if results.get('gt_bboxes') is None:
            raise KeyError(f'FilterAnnotations: the results have no gt_bboxes (img_path='
                           f"{results.get('img_path')}); put LoadAnnotations(with_bbox=True) "
                           'before it')
        boxes = results['gt_bboxes']
        if len(boxes) == 0:
            return results
        keep = np.ones(len(boxes), dtype=bool)
        if self.by_box:
            keep &= ((boxes[:, 2] - boxes[:, 0] > self.min_gt_bbox_wh[0])
                     & (boxes[:, 3] - boxes[:, 1] > self.min_gt_bbox_wh[1]))
        if self.by_mask:
            if results.get('gt_masks') is None:
                raise KeyError('FilterAnnotations(by_mask=True): the results have no gt_masks '
                               f"(img_path={results.get('img_path')}); load them with "
                               'LoadAnnotations(with_mask=True)')
            keep &= np.count_nonzero(results['gt_masks'], axis=(1, 2)) >= self.min_gt_mask_area
        if not keep.any() and self.keep_empty:
            return None
        for key in INSTANCE_KEYS:
            if results.get(key) is not None:
                results[key] = results[key][keep]
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(min_gt_bbox_wh={self.min_gt_bbox_wh}, '
                f'min_gt_mask_area={self.min_gt_mask_area}, by_box={self.by_box}, '
                f'by_mask={self.by_mask}, keep_empty={self.keep_empty})')


@TRANSFORMS.register_module()
class CopyPaste(BaseTransform):
    """Simple Copy-Paste (Ghiasi et al. 2021), mmdetection 3.x's ``CopyPaste``.

    Needs ``results['mix_results']`` = [one source results dict] of the same image size, which
    ``MultiImageMixDataset`` fetches through ``get_indexes``. Steps:
    1. choose M of the source's instances: ``selected`` draws M uniform in
       [0, min(N_src + 1, max_num_pasted) - 1] and M distinct instances (mmdet's draws);
       otherwise all of them. M = 0 returns the destination unchanged.
    2. the union of their masks covers the destination: image pixels come from the source
       there, and every destination mask loses those pixels;
    3. every destination box becomes the tight box of its remaining mask; a destination
       instance is kept when no box side moved by more than ``bbox_occluded_thr`` px, or more
       than ``mask_occluded_thr`` of its mask pixels remain (so a mostly covered instance goes);
    4. the pasted instances (boxes, labels, masks, ignore flags) follow the kept ones.
    The image keeps its dtype (mmdet's blend ``dst * (1 - m) + src * m`` turns it into int64).
    """

    def __init__(self, max_num_pasted: int = 100, bbox_occluded_thr: int = 10,
                 mask_occluded_thr: int = 300, selected: bool = True) -> None:
        if max_num_pasted < 1:
            raise ValueError(f'CopyPaste: max_num_pasted must be >= 1, got {max_num_pasted!r}')
        self.max_num_pasted = max_num_pasted
        self.bbox_occluded_thr = bbox_occluded_thr
        self.mask_occluded_thr = mask_occluded_thr
        self.selected = selected

    @cache_randomness
    def get_indexes(self, dataset) -> int:
        """Index of the source image, uniform over ``dataset`` (MultiImageMixDataset's hook)."""
        return np.random.randint(0, len(dataset))

    @cache_randomness
    def _get_selected_inds(self, num_bboxes: int) -> np.ndarray:
        """(M,) distinct source instances, M uniform in [0, min(N_src + 1, max_num_pasted))."""
        num_pasted = np.random.randint(0, min(num_bboxes + 1, self.max_num_pasted))
        return np.random.choice(num_bboxes, size=num_pasted, replace=False)

    def transform(self, results: dict) -> dict:
        mix_results = results.get('mix_results')
        if not isinstance(mix_results, (list, tuple)) or len(mix_results) != 1:
            got = 'none' if mix_results is None else f'{len(mix_results)}'
            raise ValueError(f'CopyPaste: needs results["mix_results"] holding exactly one '
                             f'source image (wrap the dataset in MultiImageMixDataset), got {got}')
        src = mix_results[0]
        for where, res in (('destination', results), ('source', src)):
            missing = [k for k in ('img', *INSTANCE_KEYS) if res.get(k) is None]
            if missing:
                raise KeyError(f'CopyPaste: the {where} image ({res.get("img_path")}) has no '
                               f'{missing}; load LoadAnnotations(with_bbox=True, with_mask=True)')
        if src['img'].shape != results['img'].shape:
            raise ValueError(f'CopyPaste: source image {src["img"].shape} and destination '
                             f'{results["img"].shape} differ in size; Pad both to one size '
                             f'first (LSJ: Pad(size=...))')
        num_src = len(src['gt_bboxes'])
        chosen = self._get_selected_inds(num_src) if self.selected else np.arange(num_src)
        if len(chosen) == 0:
            return results
        return self._paste(results, {k: src[k][chosen] for k in INSTANCE_KEYS}, src['img'])

    def _paste(self, dst: dict, pasted: dict, src_img: np.ndarray) -> dict:
        """Paste the M instances of ``pasted`` (INSTANCE_KEYS, in ``src_img``) onto ``dst``."""
        covered = pasted['gt_masks'].any(axis=0)                       # (H, W) bool
        dst_masks = np.where(covered, 0, dst['gt_masks']).astype(dst['gt_masks'].dtype)
        dst_boxes = mask_tight_boxes(dst_masks)                        # (N, 4)
        box_kept = (np.abs(dst_boxes - dst['gt_bboxes']) <= self.bbox_occluded_thr).all(axis=1)
        mask_kept = np.count_nonzero(dst_masks, axis=(1, 2)) > self.mask_occluded_thr
        keep = box_kept | mask_kept                                    # (N,)
        img = dst['img']
        cover = covered.reshape(*covered.shape, *([1] * (img.ndim - 2)))  # broadcast over channels
        dst['img'] = np.where(cover, src_img.astype(img.dtype, copy=False), img)
        dst['gt_bboxes'] = np.concatenate([dst_boxes[keep], pasted['gt_bboxes']]).astype(
            np.float32)
        dst['gt_masks'] = np.concatenate([dst_masks[keep], pasted['gt_masks']])
        for key in ('gt_bboxes_labels', 'gt_ignore_flags'):
            dst[key] = np.concatenate([dst[key][keep], pasted[key]])
        return dst

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(max_num_pasted={self.max_num_pasted}, '
                f'bbox_occluded_thr={self.bbox_occluded_thr}, '
                f'mask_occluded_thr={self.mask_occluded_thr}, selected={self.selected})')
