"""LoadAnnotations: boxes, labels, crowd flags and bitmap masks from polygons and RLE."""
from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from rcnn_det.datasets.transforms import LoadAnnotations, segmentation_to_mask


def mask_box(mask: np.ndarray) -> np.ndarray:
    """xyxy of the pixels of a (H, W) mask, in the continuous frame (right edge = last + 1)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def results_with(instances, height=30, width=40):
    return dict(img_path='x.png', height=height, width=width, instances=instances)


def test_boxes_labels_flags_dtypes():
    out = LoadAnnotations()(results_with([
        dict(bbox=[1, 2, 3, 4], bbox_label=2, ignore_flag=0),
        dict(bbox=[5, 6, 7, 8], bbox_label=0, ignore_flag=1)]))
    assert out['gt_bboxes'].dtype == np.float32 and out['gt_bboxes'].shape == (2, 4)
    np.testing.assert_array_equal(out['gt_bboxes'], [[1, 2, 3, 4], [5, 6, 7, 8]])
    assert out['gt_bboxes_labels'].dtype == np.int64
    np.testing.assert_array_equal(out['gt_bboxes_labels'], [2, 0])
    assert out['gt_ignore_flags'].dtype == bool
    np.testing.assert_array_equal(out['gt_ignore_flags'], [False, True])
    assert 'gt_masks' not in out


def test_no_instances_gives_empty_arrays():
    out = LoadAnnotations(with_mask=True)(results_with([]))
    assert out['gt_bboxes'].shape == (0, 4) and out['gt_bboxes_labels'].shape == (0,)
    assert out['gt_ignore_flags'].shape == (0,)
    assert out['gt_masks'].shape == (0, 30, 40) and out['gt_masks'].dtype == np.uint8


def test_polygon_mask_matches_its_box():
    triangle = [[5.5, 4.2, 30.7, 9.0, 12.3, 25.6]]
    box = [5.5, 4.2, 30.7, 25.6]
    out = LoadAnnotations(with_mask=True)(results_with([
        dict(bbox=box, bbox_label=1, ignore_flag=0, mask=triangle)]))
    masks = out['gt_masks']
    assert masks.shape == (1, 30, 40) and masks.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1}
    np.testing.assert_allclose(mask_box(masks[0]), box, atol=1)
    assert masks.flags.c_contiguous


def test_rle_masks_compressed_and_uncompressed():
    bitmap = np.zeros((30, 40), np.uint8, order='F')
    bitmap[10:18, 20:28] = 1
    compressed = mask_utils.encode(bitmap)
    as_str = dict(size=compressed['size'], counts=compressed['counts'].decode())
    # Uncompressed RLE: alternating run lengths in column-major order, as COCO crowd anns have.
    flat = bitmap.flatten(order='F')
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    uncompressed = dict(size=[30, 40], counts=runs)
    instances = [dict(bbox=[20, 10, 28, 18], bbox_label=0, ignore_flag=1, mask=m)
                 for m in (compressed, as_str, uncompressed)]
    out = LoadAnnotations(with_mask=True)(results_with(instances))
    for mask in out['gt_masks']:
        np.testing.assert_array_equal(mask, bitmap)
        np.testing.assert_allclose(mask_box(mask), [20, 10, 28, 18], atol=1)
    np.testing.assert_array_equal(out['gt_ignore_flags'], [True, True, True])


def test_masks_use_the_loaded_image_size():
    results = results_with([dict(bbox=[0, 0, 4, 4], bbox_label=0, ignore_flag=0,
                                 mask=[[0, 0, 4, 0, 4, 4, 0, 4]])])
    results['ori_shape'] = (12, 16)  # the decoded image wins over the json's height/width
    assert LoadAnnotations(with_mask=True)(results)['gt_masks'].shape == (1, 12, 16)


def test_invalid_polygon_becomes_an_ignored_empty_mask():
    out = LoadAnnotations(with_mask=True)(results_with([
        dict(bbox=[1, 1, 5, 5], bbox_label=0, ignore_flag=0, mask=[[1, 1, 5, 5]])]))
    assert out['gt_masks'].sum() == 0
    np.testing.assert_array_equal(out['gt_ignore_flags'], [True])


def test_missing_mask_names_the_image():
    with pytest.raises(KeyError, match=r"instance 0 of x.png has no 'mask'"):
        LoadAnnotations(with_mask=True)(results_with([dict(bbox=[1, 1, 5, 5], bbox_label=0,
                                                           ignore_flag=0)]))


def test_unsupported_options():
    with pytest.raises(ValueError, match='poly2mask'):
        LoadAnnotations(poly2mask=False)
    with pytest.raises(ValueError, match='box_type'):
        LoadAnnotations(box_type='rbox')
    LoadAnnotations(box_type=None)


def test_segmentation_to_mask_unions_polygons():
    two = [[0, 0, 4, 0, 4, 4, 0, 4], [10, 10, 14, 10, 14, 14, 10, 14]]
    assert segmentation_to_mask(two, 20, 20).sum() == 32
