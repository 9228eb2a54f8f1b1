"""CopyPaste: pasted instances cover the destination's, covered instances lose their pixels and
are dropped by mmdet's two thresholds, and boxes stay the tight boxes of their masks.

Destination (40 x 80): A = rect [10, 10, 30, 30] (label 0), B = rect [50, 10, 70, 30] (label 1,
ignored). Source: C = rect [20, 5, 40, 35] covers A's right half (label 2), D = rect
[45, 5, 75, 35] covers all of B (label 3, ignored). Channel 0 of each image paints every
instance with 10 * (label + 1); the source's background is 255, the destination's 0.
"""
from __future__ import annotations

import numpy as np
import pytest
from mmengine.registry import DefaultScope

from rcnn_det.datasets.transforms import CopyPaste, mask_tight_boxes
from rcnn_det.registry import TRANSFORMS

HEIGHT, WIDTH = 40, 80


def rect_sample(boxes, labels, background: int) -> dict:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    masks = np.zeros((len(boxes), HEIGHT, WIDTH), np.uint8)
    img = np.full((HEIGHT, WIDTH, 3), background, np.uint8)
    for mask, (x1, y1, x2, y2), label in zip(masks, boxes.astype(int), labels):
        mask[y1:y2, x1:x2] = 1
        img[y1:y2, x1:x2, 0] = 10 * (label + 1)
    labels = np.asarray(labels, np.int64)
    return dict(img=img, img_shape=(HEIGHT, WIDTH), gt_bboxes=boxes, gt_masks=masks,
                gt_bboxes_labels=labels, gt_ignore_flags=labels % 2 == 1)


def destination() -> dict:
    return rect_sample([[10, 10, 30, 30], [50, 10, 70, 30]], [0, 1], background=0)


def source() -> dict:
    return rect_sample([[20, 5, 40, 35], [45, 5, 75, 35]], [2, 3], background=255)


def paste(transform: CopyPaste, dst: dict | None = None, src: dict | None = None) -> dict:
    dst = destination() if dst is None else dst
    dst['mix_results'] = [source() if src is None else src]
    return transform(dst)


def assert_boxes_tight(out: dict) -> None:
    np.testing.assert_array_equal(out['gt_bboxes'], mask_tight_boxes(out['gt_masks']))
    assert out['gt_bboxes'].dtype == np.float32 and out['gt_masks'].dtype == np.uint8
    num = len(out['gt_bboxes'])
    assert out['gt_masks'].shape == (num, HEIGHT, WIDTH)
    assert out['gt_bboxes_labels'].shape == out['gt_ignore_flags'].shape == (num,)


def test_pasted_objects_cover_the_destination():
    out = paste(CopyPaste(selected=False))   # A keeps 10 x 20 = 200 px, its box moved by 10
    # A (kept: no side moved by more than 10 px), then the pasted C and D; B is fully covered
    np.testing.assert_array_equal(out['gt_bboxes_labels'], [0, 2, 3])
    np.testing.assert_array_equal(out['gt_ignore_flags'], [False, False, True])
    np.testing.assert_array_equal(out['gt_bboxes'],
                                  [[10, 10, 20, 30], [20, 5, 40, 35], [45, 5, 75, 35]])
    assert_boxes_tight(out)
    # pixels under C or D come from the source, the rest from the destination
    covered = source()['gt_masks'].any(0)
    np.testing.assert_array_equal(out['img'][covered], source()['img'][covered])
    np.testing.assert_array_equal(out['img'][~covered], destination()['img'][~covered])
    assert out['img'].dtype == np.uint8
    # no pixel belongs to two instances any more, and each mask shows its own code
    assert out['gt_masks'].sum(0).max() == 1
    for mask, label in zip(out['gt_masks'].astype(bool), out['gt_bboxes_labels']):
        assert (out['img'][mask, 0] == 10 * (label + 1)).all()
    assert 'mix_results' in out   # MultiImageMixDataset removes it, as in mmdet


@pytest.mark.parametrize('bbox_thr, mask_thr, a_kept', [
    (10, 300, True),    # box rule: A's box moved by exactly 10 px <= 10
    (9, 300, False),    # moved more than 9 px and only 200 px left (<= 300)
    (9, 199, True),     # mask rule: 200 px left > 199
    (9, 200, False),    # strictly more pixels than the threshold
])
def test_occluded_instances_are_removed_by_the_thresholds(bbox_thr, mask_thr, a_kept):
    out = paste(CopyPaste(bbox_occluded_thr=bbox_thr, mask_occluded_thr=mask_thr,
                          selected=False))
    expected = [0, 2, 3] if a_kept else [2, 3]
    np.testing.assert_array_equal(out['gt_bboxes_labels'], expected)
    assert_boxes_tight(out)   # B: its mask is empty and its box jumped to 0, it always goes


def test_an_unoccluded_destination_keeps_all_its_instances():
    src = rect_sample([[0, 32, 8, 40]], [4], background=255)   # away from A and B
    out = paste(CopyPaste(selected=False), src=src)
    np.testing.assert_array_equal(out['gt_bboxes_labels'], [0, 1, 4])
    np.testing.assert_array_equal(out['gt_masks'][:2], destination()['gt_masks'])
    assert_boxes_tight(out)


def test_selected_draws_like_mmdet():
    counts = set()
    for seed in range(10):
        np.random.seed(seed)
        out = paste(CopyPaste(max_num_pasted=100))
        np.random.seed(seed)
        num = np.random.randint(0, min(2 + 1, 100))
        chosen = np.random.choice(2, size=num, replace=False)
        counts.add(num)
        pasted = out['gt_bboxes_labels'][len(out['gt_bboxes_labels']) - num:]
        np.testing.assert_array_equal(pasted, (chosen + 2) if num else [])
        if num == 0:   # nothing chosen: the destination is returned as it was
            np.testing.assert_array_equal(out['img'], destination()['img'])
            np.testing.assert_array_equal(out['gt_bboxes'], destination()['gt_bboxes'])
        assert_boxes_tight(out)
    assert counts == {0, 1, 2}


def test_max_num_pasted_caps_the_draw():
    for seed in range(5):
        np.random.seed(seed)
        out = paste(CopyPaste(max_num_pasted=1))   # randint(0, 1): never anything
        np.testing.assert_array_equal(out['gt_bboxes_labels'], [0, 1])
    np.random.seed(0)
    out = paste(CopyPaste(max_num_pasted=2))       # at most one instance
    assert len(out['gt_bboxes_labels']) <= 3


def test_empty_destination_and_empty_source():
    empty = rect_sample(np.zeros((0, 4)), [], background=0)
    out = paste(CopyPaste(selected=False), dst=empty)
    np.testing.assert_array_equal(out['gt_bboxes_labels'], [2, 3])
    assert_boxes_tight(out)
    out = paste(CopyPaste(selected=False), src=rect_sample(np.zeros((0, 4)), [], 255))
    np.testing.assert_array_equal(out['gt_bboxes_labels'], [0, 1])
    np.testing.assert_array_equal(out['img'], destination()['img'])


def test_get_indexes_is_uniform_over_the_dataset():
    np.random.seed(0)
    drawn = {CopyPaste().get_indexes(range(3)) for _ in range(50)}
    assert drawn == {0, 1, 2}


def test_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match='mix_results'):
        CopyPaste()(destination())
    dst = destination()
    dst['mix_results'] = [source(), source()]
    with pytest.raises(ValueError, match='exactly one'):
        CopyPaste()(dst)
    small = rect_sample([[0, 0, 4, 4]], [0], 0)
    small['img'] = small['img'][:20]
    with pytest.raises(ValueError, match='differ in size'):
        paste(CopyPaste(), src=small)
    no_masks = destination()
    del no_masks['gt_masks']
    with pytest.raises(KeyError, match='gt_masks'):
        paste(CopyPaste(), dst=no_masks)
    with pytest.raises(ValueError, match='max_num_pasted'):
        CopyPaste(max_num_pasted=0)


def test_registered_with_mmdet_arguments():
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        built = TRANSFORMS.build(dict(type='CopyPaste', max_num_pasted=100, bbox_occluded_thr=10,
                                      mask_occluded_thr=300, selected=True))
    assert type(built) is CopyPaste and built.max_num_pasted == 100
    assert repr(built) == ('CopyPaste(max_num_pasted=100, bbox_occluded_thr=10, '
                           'mask_occluded_thr=300, selected=True)')
