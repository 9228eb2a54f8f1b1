"""Loading transforms: the image file, then the annotations of a ``CocoDataset`` data info.

Shape letters: N instances of the image, H x W its size in pixels.
"""
from __future__ import annotations

import numpy as np
from mmcv.transforms import BaseTransform
from mmcv.transforms import LoadAnnotations as MMCVLoadAnnotations
from mmcv.transforms import LoadImageFromFile as MMCVLoadImageFromFile
from pycocotools import mask as mask_utils

from rcnn_det.registry import TRANSFORMS


def segmentation_to_mask(segm: list | dict, height: int, width: int) -> np.ndarray:
    """A COCO segmentation -> (H, W) uint8 {0, 1} mask, rasterised by pycocotools.

    ``segm``: polygons ``[[x1, y1, x2, y2, ...], ...]`` (unioned), an uncompressed RLE
    ``{'size': [h, w], 'counts': [int, ...]}`` (crowd regions) or a compressed RLE
    (``counts`` a str or bytes).
    """
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm.get('counts'), list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = segm
    return np.ascontiguousarray(mask_utils.decode(rle))


def is_valid_segmentation(segm: object) -> bool:
    """mmdet's test: polygons of >= 3 points with an even coordinate count, or an RLE."""
    if isinstance(segm, list):
        return any(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segm)
    return (isinstance(segm, dict) and segm.get('size') is not None
            and isinstance(segm.get('counts'), (list, str, bytes)))


@TRANSFORMS.register_module()
class LoadImageFromFile(MMCVLoadImageFromFile):
    """mmcv's ``LoadImageFromFile`` whose failures name the file and the sample.

    Adds ``img`` (H, W, 3) BGR uint8, ``img_shape`` and ``ori_shape`` (H, W). A missing file
    raises ``FileNotFoundError``, an undecodable one ``OSError``; both say which file, image id
    and dataset index failed (mmcv raises the backend's bare error or a bare assertion).
    ``ignore_empty=True`` keeps mmcv's behaviour of returning None instead.
    """

    def transform(self, results: dict) -> dict | None:
        path = results['img_path']
        where = f"img_id={results.get('img_id')}, dataset index={results.get('sample_idx')}"
        try:
            loaded = super().transform(results)  # returns None itself when ignore_empty
        except FileNotFoundError as e:
            raise FileNotFoundError(f'image file not found: {path} ({where})') from e
        except AssertionError as e:  # mmcv's "failed to load image": bytes cv2 cannot decode
            raise OSError(f'cannot decode image file {path} ({where}): not a readable image') from e
        except Exception as e:
            raise OSError(f'cannot read image file {path} ({where}): {e!r}') from e
        return loaded


@TRANSFORMS.register_module()
class LoadImageFromNDArray(BaseTransform):
    """``LoadImageFromFile`` for an image already in memory (mmdetection 3.x's name).

    ``results['img']``: (H, W, 3) BGR array, as ``mmcv.imread`` or ``cv2.imread`` give it; kept
    as is (``to_float32`` converts it). Adds ``img_path`` = None, ``img_shape`` and
    ``ori_shape`` (H, W). ``inference_detector`` puts it in place of the file loader for arrays.
    """

    def __init__(self, to_float32: bool = False) -> None:
        self.to_float32 = to_float32

    def transform(self, results: dict) -> dict:
        img = results.get('img')
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
            got = (f'an array of shape {img.shape}' if isinstance(img, np.ndarray)
                   else type(img).__name__)
            raise ValueError(f'LoadImageFromNDArray: expected an (H, W, 3) BGR image array, '
                             f"got {got} (img_id={results.get('img_id')})")
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_path'] = None
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(to_float32={self.to_float32})'


@TRANSFORMS.register_module()
class LoadAnnotations(MMCVLoadAnnotations):
    """Instances of a data info -> numpy targets (mmdet 3.x's keys, plain arrays).

    Adds:
        gt_bboxes:        (N, 4) float32 xyxy px          (with_bbox)
        gt_ignore_flags:  (N,) bool, True for crowd        (with_bbox)
        gt_bboxes_labels: (N,) int64 in [0, C)             (with_label)
        gt_masks:         (N, H, W) uint8 {0, 1}           (with_mask)
        gt_seg_map:       (H, W) uint8                     (with_seg, mmcv's loader)

    Args:
        with_mask: rasterise each instance's ``mask`` (polygons or RLE, crowd RLE included)
            at the image size (``ori_shape`` if the image is loaded, else height/width).
        poly2mask: must be True: masks are kept as bitmaps (mmdet's ``PolygonMasks`` is not
            ported).
        box_type: 'hbox' (mmdet's default) or None; both give a plain numpy array.
    An instance whose segmentation is unusable (mmdet's test) gets an empty mask and is marked
    ignored, as mmdet does.
    """

    def __init__(self, with_bbox: bool = True, with_label: bool = True, with_mask: bool = False,
                 with_seg: bool = False, poly2mask: bool = True, box_type: str | None = 'hbox',
                 imdecode_backend: str = 'cv2', *, backend_args: dict | None = None) -> None:
        super().__init__(with_bbox=with_bbox, with_label=with_label, with_seg=with_seg,
                         imdecode_backend=imdecode_backend, backend_args=backend_args)
        if not poly2mask:
            raise ValueError('LoadAnnotations: poly2mask=False (polygon masks) is not supported; '
                             'rcnn_det keeps masks as (N, H, W) bitmaps')
        if box_type not in ('hbox', None):
            raise ValueError(f"LoadAnnotations: box_type must be 'hbox' or None, got {box_type!r}")
        self.with_mask = with_mask
        self.poly2mask = poly2mask
        self.box_type = box_type

    def _load_bboxes(self, results: dict) -> None:
        super()._load_bboxes(results)
        results['gt_ignore_flags'] = np.array(
            [inst['ignore_flag'] for inst in results['instances']], dtype=bool)

    def _load_masks(self, results: dict) -> None:
        height, width = results.get('ori_shape', (results['height'], results['width']))
        masks, ignore = [], []
        for i, inst in enumerate(results['instances']):
            if 'mask' not in inst:
                raise KeyError(f"LoadAnnotations(with_mask=True): instance {i} of "
                               f"{results.get('img_path')} has no 'mask' (its COCO annotation "
                               "has no 'segmentation')")
            if is_valid_segmentation(inst['mask']):
                masks.append(segmentation_to_mask(inst['mask'], height, width))
                ignore.append(bool(inst['ignore_flag']))
            else:
                masks.append(np.zeros((height, width), np.uint8))
                ignore.append(True)
        results['gt_masks'] = (np.stack(masks) if masks
                               else np.zeros((0, height, width), np.uint8))
        if self.with_bbox:
            results['gt_ignore_flags'] = np.array(ignore, dtype=bool)

    def transform(self, results: dict) -> dict:
        super().transform(results)
        if self.with_mask:
            self._load_masks(results)
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(with_bbox={self.with_bbox}, with_label={self.with_label}, '
                f'with_mask={self.with_mask}, with_seg={self.with_seg}, '
                f'box_type={self.box_type!r})')
