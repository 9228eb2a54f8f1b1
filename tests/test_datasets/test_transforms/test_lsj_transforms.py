"""The per-image steps of large-scale jitter (LSJ): RandomResize, RandomCrop as Co-DINO's LSJ
config uses it, FilterAnnotations and Pad to a fixed size. Boxes stay the tight boxes of their
masks, masks stay on the image, and the random draws are mmcv's / mmdet's.

The samples come from test_mask_alignment.py: five instances whose image channel 0 paints each
mask with its label's code; odd labels are ignored (crowd).
"""
from __future__ import annotations

import numpy as np
import pytest
from mmcv.transforms import RandomResize as MMCVRandomResize
from mmengine.registry import DefaultScope

from rcnn_det.datasets.transforms import (FilterAnnotations, Pad, RandomCrop, RandomResize,
                                          Resize, mask_tight_boxes)
from rcnn_det.registry import TRANSFORMS

from .test_mask_alignment import (HEIGHT, WIDTH, assert_aligned, assert_in_step, draw_masks,
                                  make_sample, tight_box)


def keep_ratio_shape(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's imrescale: factor min(long / long side, short / short side), sides rounded."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


# ---- RandomResize -------------------------------------------------------------------------

@pytest.mark.parametrize('seed', range(6))
def test_random_resize_ratio_range_draws_like_mmcv_and_keeps_masks_on_boxes(seed):
    np.random.seed(seed)
    out = RandomResize(scale=(128, 128), ratio_range=(0.1, 2.0), keep_ratio=True)(make_sample())
    np.random.seed(seed)
    ratio = np.random.random_sample() * (2.0 - 0.1) + 0.1   # mmcv's _random_sample_ratio
    expected_scale = (int(128 * ratio), int(128 * ratio))
    assert out['scale'] == expected_scale
    assert out['img'].shape[:2] == keep_ratio_shape(HEIGHT, WIDTH, expected_scale)
    assert out['keep_ratio'] is True
    assert len(out['gt_bboxes_labels']) == 5
    assert_in_step(out)
    for mask, box in zip(out['gt_masks'], out['gt_bboxes']):
        if mask.any():
            np.testing.assert_allclose(tight_box(mask), box, atol=1)
    if out['img'].shape[0] >= HEIGHT // 2:   # instances big enough to check on the image
        assert_aligned(out)


def test_random_resize_two_scale_form_draws_each_side():
    sizes = set()
    for seed in range(8):
        np.random.seed(seed)
        out = RandomResize(scale=[(40, 30), (120, 90)], keep_ratio=False)(make_sample())
        np.random.seed(seed)
        width, height = np.random.randint(40, 121), np.random.randint(30, 91)  # mmcv's order
        assert out['img'].shape[:2] == (height, width) and out['scale'] == (width, height)
        assert out['gt_masks'].shape[1:] == (height, width)
        sizes.add((height, width))
        assert_aligned(out)
    assert len(sizes) > 1


def test_random_resize_builds_rcnn_det_resize_in_any_scope():
    """mmcv's RandomResize in mmcv's scope builds mmcv's Resize, which leaves the masks at
    the old size; ours resizes them in every scope."""
    with DefaultScope.overwrite_default_scope('mmcv'):
        ours = RandomResize(scale=(80, 80), ratio_range=(1.0, 1.0), keep_ratio=True)
        theirs = MMCVRandomResize(scale=(80, 80), ratio_range=(1.0, 1.0), keep_ratio=True)
    assert type(ours.resize) is Resize and type(theirs.resize) is not Resize
    out = ours(make_sample())
    assert out['img'].shape[:2] == out['gt_masks'].shape[1:] == (53, 80)
    assert_aligned(out)
    stale = theirs(make_sample())
    assert stale['gt_masks'].shape[1:] != stale['img'].shape[:2]   # what ours prevents
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        built = TRANSFORMS.build(dict(type='RandomResize', scale=(1024, 1024),
                                      ratio_range=(0.1, 2.0), keep_ratio=True))
    assert type(built) is RandomResize and type(built.resize) is Resize
    assert built.resize.keep_ratio


def test_random_resize_accepts_lists_from_json_configs():
    from_json = RandomResize(scale=[64, 48], ratio_range=[0.5, 1.5], keep_ratio=True)
    assert from_json.scale == (64, 48) and from_json.ratio_range == (0.5, 1.5)
    pairs = RandomResize(scale=[[64, 48], [32, 24]])
    assert pairs.scale == [(64, 48), (32, 24)]
    np.random.seed(0)
    assert pairs(make_sample())['img'].ndim == 3


@pytest.mark.parametrize('kwargs, match', [
    (dict(scale=(64, 64)), 'ratio_range'),                        # single scale needs a range
    (dict(scale=(64, 64), ratio_range=(2.0, 0.5)), 'ratio_range'),
    (dict(scale=(64, 64), ratio_range=(0.0, 1.0)), 'ratio_range'),
    (dict(scale=[(64, 64), (32, 32)], ratio_range=(0.5, 1.0)), 'no meaning'),
    (dict(scale=(64, 0), ratio_range=(0.5, 1.0)), 'scale'),
    (dict(scale=[(64, 64), (32, 32), (16, 16)]), 'scale'),
    (dict(scale=64, ratio_range=(0.5, 1.0)), 'scale'),
])
def test_random_resize_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandomResize(**kwargs)


# ---- RandomCrop as LSJ uses it -------------------------------------------------------------

LSJ_CROP = dict(crop_type='absolute_range', recompute_bbox=True, allow_negative_crop=True)


def find_window(img: np.ndarray, crop: np.ndarray) -> tuple[int, int]:
    """(top, left) where ``crop`` sits inside ``img`` (brute force)."""
    h, w = crop.shape[:2]
    for top in range(img.shape[0] - h + 1):
        for left in range(img.shape[1] - w + 1):
            if np.array_equal(img[top:top + h, left:left + w], crop):
                return top, left
    raise AssertionError('the crop is not a window of the image')


@pytest.mark.parametrize('seed', range(4))
def test_lsj_crop_of_a_larger_image_is_exactly_the_crop_size(seed):
    big = Resize(scale=(180, 120))(make_sample())              # 120 x 180 > the 64 crop
    before = {k: v.copy() for k, v in big.items() if isinstance(v, np.ndarray)}
    np.random.seed(seed)
    out = RandomCrop(crop_size=(64, 64), **LSJ_CROP)(big)
    assert out['img'].shape[:2] == (64, 64) == out['img_shape']
    top, left = find_window(before['img'], out['img'])
    np.random.seed(seed)   # 'absolute_range' with min == max draws the size, then the offset
    assert (np.random.randint(64, 65), np.random.randint(64, 65)) == (64, 64)
    assert (top, left) == (np.random.randint(0, 120 - 64 + 1), np.random.randint(0, 180 - 64 + 1))
    # kept: the instances whose clipped box meets the window, in order, with labels and flags
    xs = np.clip(before['gt_bboxes'][:, 0::2] - left, 0, 64)
    ys = np.clip(before['gt_bboxes'][:, 1::2] - top, 0, 64)
    kept = np.flatnonzero((xs[:, 1] > xs[:, 0]) & (ys[:, 1] > ys[:, 0]))
    np.testing.assert_array_equal(out['gt_bboxes_labels'], kept)
    np.testing.assert_array_equal(out['gt_masks'],
                                  before['gt_masks'][kept, top:top + 64, left:left + 64])
    # recompute_bbox: every box is the tight box of its cropped mask (zeros for an empty one)
    np.testing.assert_array_equal(out['gt_bboxes'], mask_tight_boxes(out['gt_masks']))
    assert_in_step(out)


def test_lsj_crop_of_a_smaller_image_keeps_it_whole_with_tight_boxes():
    sample = make_sample()
    sample['gt_bboxes'] = sample['gt_bboxes'] + np.array([-2, -1, 3, 2], np.float32)  # loose
    out = RandomCrop(crop_size=(1024, 1024), **LSJ_CROP)(sample)
    assert out['img'].shape[:2] == (HEIGHT, WIDTH)
    np.testing.assert_array_equal(out['gt_masks'], draw_masks(HEIGHT, WIDTH))
    np.testing.assert_array_equal(out['gt_bboxes'],
                                  np.stack([tight_box(m) for m in draw_masks(HEIGHT, WIDTH)]))


def triangle_sample() -> dict:
    """One lower-left triangle (row >= col) in the box [0, 0, 40, 40] of a 60 x 90 image."""
    masks = np.zeros((1, HEIGHT, WIDTH), np.uint8)
    rows, cols = np.indices((40, 40))
    masks[0, :40, :40] = rows >= cols
    return make_sample(masks)


def fixed_window_crop(top: int, left: int, size: tuple[int, int], **kwargs) -> RandomCrop:
    crop = RandomCrop(crop_size=size, crop_type='absolute', **kwargs)
    crop._rand_offset = lambda margin: (top, left)   # the window, instead of a random one
    return crop


def test_recompute_bbox_gives_an_empty_box_when_the_window_misses_the_mask():
    # rows 0..14, cols 20..79: the triangle's box reaches in, its pixels (col <= row) do not
    clipped = fixed_window_crop(0, 20, (15, 60), allow_negative_crop=True)(triangle_sample())
    np.testing.assert_array_equal(clipped['gt_bboxes'], [[0, 0, 20, 15]])  # box meets window
    out = fixed_window_crop(0, 20, (15, 60), allow_negative_crop=True,
                            recompute_bbox=True)(triangle_sample())
    assert out['gt_masks'].shape == (1, 15, 60) and not out['gt_masks'].any()
    np.testing.assert_array_equal(out['gt_bboxes'], [[0, 0, 0, 0]])
    # the LSJ pipeline's FilterAnnotations then removes it: None with keep_empty (default),
    # an image without instances otherwise
    assert FilterAnnotations(min_gt_bbox_wh=(1e-2, 1e-2))(dict(out)) is None
    empty = FilterAnnotations(min_gt_bbox_wh=(1e-2, 1e-2), keep_empty=False)(out)
    assert empty['gt_bboxes'].shape == (0, 4) and empty['gt_masks'].shape == (0, 15, 60)
    # a window that cuts the triangle: the recomputed box is tighter than the clipped one
    cut = fixed_window_crop(10, 5, (20, 60), recompute_bbox=True)(triangle_sample())
    np.testing.assert_array_equal(cut['gt_bboxes'], [tight_box(cut['gt_masks'][0])])
    np.testing.assert_array_equal(cut['gt_bboxes'], [[0, 0, 25, 20]])  # rows 10..29, cols 5..29


@pytest.mark.parametrize('allow_negative_crop', [True, False])
def test_crop_that_removes_every_box(allow_negative_crop):
    sample = make_sample()
    before = {k: v.copy() for k, v in sample.items() if isinstance(v, np.ndarray)}
    # rows 50..59, cols 0..3: below / left of every instance
    out = fixed_window_crop(50, 0, (10, 4), allow_negative_crop=allow_negative_crop,
                            recompute_bbox=True)(sample)
    if not allow_negative_crop:
        assert out is None   # mmengine's dataset then draws another image
        for key, value in before.items():   # and the sample was not touched
            np.testing.assert_array_equal(sample[key], value)
        return
    assert out['img'].shape == (10, 4, 3)
    assert out['gt_bboxes'].shape == (0, 4) and out['gt_bboxes'].dtype == np.float32
    assert out['gt_masks'].shape == (0, 10, 4) and out['gt_masks'].dtype == np.uint8
    assert out['gt_bboxes_labels'].shape == (0,) and out['gt_ignore_flags'].shape == (0,)
    assert FilterAnnotations(min_gt_bbox_wh=(1e-2, 1e-2))(out) is out  # nothing to filter


def test_crop_keeps_ignore_flags_with_their_instances():
    # rows 0..29, cols 40..89: the ellipse (label 1, ignored), octagon (3, ignored), bar (4)
    out = fixed_window_crop(0, 40, (30, 50))(make_sample())
    np.testing.assert_array_equal(out['gt_bboxes_labels'], [1, 4])
    np.testing.assert_array_equal(out['gt_ignore_flags'], [True, False])
    assert_aligned(out, cut=True)


# ---- FilterAnnotations ---------------------------------------------------------------------

def boxes_sample(boxes, areas=None) -> dict:
    """Instances with the given boxes; instance i's mask has ``areas[i]`` pixels (default: its
    box filled)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    masks = np.zeros((len(boxes), 20, 20), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        masks[i, y1:y2, x1:x2] = 1
        if areas is not None:
            masks[i].flat[np.flatnonzero(masks[i])[areas[i]:]] = 0
    num = len(boxes)
    return dict(img=np.zeros((20, 20, 3), np.uint8), gt_bboxes=boxes, gt_masks=masks,
                gt_bboxes_labels=np.arange(num, dtype=np.int64),
                gt_ignore_flags=np.arange(num) % 2 == 1)


def test_filter_by_box_is_strict_and_filters_every_key_alike():
    sample = boxes_sample([[0, 0, 2, 5], [0, 0, 3, 5], [1, 1, 4, 3], [2, 2, 9, 9]])
    out = FilterAnnotations(min_gt_bbox_wh=(2, 2))(sample)
    # widths 2, 3, 3, 7 and heights 5, 5, 2, 7: > 2 on both sides keeps instances 1 and 3
    np.testing.assert_array_equal(out['gt_bboxes_labels'], [1, 3])
    np.testing.assert_array_equal(out['gt_bboxes'], [[0, 0, 3, 5], [2, 2, 9, 9]])
    np.testing.assert_array_equal(out['gt_ignore_flags'], [True, True])
    np.testing.assert_array_equal(out['gt_masks'], boxes_sample([[0, 0, 3, 5], [2, 2, 9, 9]])[
        'gt_masks'])


def test_filter_lsj_threshold_drops_only_degenerate_boxes():
    sample = boxes_sample([[0, 0, 0, 0], [3, 3, 3, 8], [3, 3, 3.02, 3.02], [3, 3, 4, 4]])
    out = FilterAnnotations(min_gt_bbox_wh=(1e-2, 1e-2))(sample)
    np.testing.assert_array_equal(out['gt_bboxes_labels'], [2, 3])


def test_filter_by_mask_and_both():
    sample = boxes_sample([[0, 0, 5, 5], [0, 0, 5, 5], [0, 0, 1, 1], [0, 0, 6, 6]],
                          areas=[3, 4, 1, 0])
    by_mask = FilterAnnotations(min_gt_mask_area=4, by_box=False, by_mask=True)(dict(sample))
    np.testing.assert_array_equal(by_mask['gt_bboxes_labels'], [1])
    assert (np.count_nonzero(by_mask['gt_masks'], axis=(1, 2)) == [4]).all()
    both = FilterAnnotations(min_gt_bbox_wh=(1, 1), min_gt_mask_area=1, by_mask=True)(sample)
    np.testing.assert_array_equal(both['gt_bboxes_labels'], [0, 1])  # 2: box 1 x 1; 3: no mask


def test_filter_keep_empty_returns_none_and_empty_images_pass():
    tiny = boxes_sample([[0, 0, 0.5, 0.5], [1, 1, 1.5, 9]])
    assert FilterAnnotations()(dict(tiny)) is None                     # keep_empty=True
    kept = FilterAnnotations(keep_empty=False)(tiny)
    assert kept['gt_bboxes'].shape == (0, 4) and kept['gt_masks'].shape == (0, 20, 20)
    assert kept['gt_bboxes_labels'].shape == (0,) and kept['gt_ignore_flags'].shape == (0,)
    nothing = boxes_sample(np.zeros((0, 4)))
    assert FilterAnnotations()(nothing) is nothing                     # nothing to filter


def test_filter_without_masks_or_labels_filters_what_is_there():
    sample = boxes_sample([[0, 0, 5, 5], [0, 0, 0.5, 5]])
    del sample['gt_masks'], sample['gt_bboxes_labels']
    out = FilterAnnotations()(sample)
    np.testing.assert_array_equal(out['gt_bboxes'], [[0, 0, 5, 5]])
    np.testing.assert_array_equal(out['gt_ignore_flags'], [False])


def test_filter_errors_name_what_is_missing():
    with pytest.raises(ValueError, match='by_box and by_mask'):
        FilterAnnotations(by_box=False)
    with pytest.raises(ValueError, match='min_gt_bbox_wh'):
        FilterAnnotations(min_gt_bbox_wh=1)
    no_masks = boxes_sample([[0, 0, 5, 5]])
    del no_masks['gt_masks']
    with pytest.raises(KeyError, match='gt_masks'):
        FilterAnnotations(by_mask=True)(no_masks)
    with pytest.raises(KeyError, match='gt_bboxes'):
        FilterAnnotations()(dict(img=np.zeros((4, 4, 3), np.uint8)))


def test_filter_is_registered_with_mmdet_arguments():
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        built = TRANSFORMS.build(dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2),
                                      min_gt_mask_area=2, by_box=True, by_mask=True,
                                      keep_empty=False))
    assert type(built) is FilterAnnotations and built.by_mask and not built.keep_empty
    assert 'keep_empty=False' in repr(built)


# ---- Pad to a fixed size ---------------------------------------------------------------------

def test_pad_to_fixed_size_with_a_per_channel_value_pads_masks_with_zero():
    out = Pad(size=(128, 96), pad_val=dict(img=(114, 114, 114)))(make_sample())  # (w, h)
    assert out['img'].shape == (96, 128, 3) and tuple(out['pad_shape'][:2]) == (96, 128)
    assert out['img_shape'] == (96, 128)       # mmcv's Pad: img_shape becomes the padded size
    np.testing.assert_array_equal(out['img'][:HEIGHT, :WIDTH], make_sample()['img'])
    assert (out['img'][HEIGHT:] == 114).all() and (out['img'][:, WIDTH:] == 114).all()
    assert out['gt_masks'].shape == (5, 96, 128)
    np.testing.assert_array_equal(out['gt_masks'][:, :HEIGHT, :WIDTH], draw_masks(HEIGHT, WIDTH))
    assert not out['gt_masks'][:, HEIGHT:].any() and not out['gt_masks'][:, :, WIDTH:].any()
    np.testing.assert_array_equal(out['gt_bboxes'], make_sample()['gt_bboxes'])
    np.testing.assert_array_equal(out['gt_bboxes'], mask_tight_boxes(out['gt_masks']))


def test_pad_to_a_size_smaller_than_the_image_leaves_it():
    out = Pad(size=(64, 32), pad_val=dict(img=(114, 114, 114)))(make_sample())
    assert out['img'].shape[:2] == out['gt_masks'].shape[1:] == (HEIGHT, WIDTH)


def test_lsj_chain_keeps_boxes_tight_on_masks():
    """RandomResize -> RandomCrop -> FilterAnnotations -> Pad, as the Co-DINO LSJ config, on
    a small scale: every kept box is exactly the tight box of its mask, on the image."""
    filtered_out = checked_on_image = 0
    for seed in range(12):
        np.random.seed(seed)
        out = make_sample()
        for transform in (RandomResize(scale=(96, 96), ratio_range=(0.1, 2.0), keep_ratio=True),
                          RandomCrop(crop_size=(96, 96), **LSJ_CROP),
                          FilterAnnotations(min_gt_bbox_wh=(1e-2, 1e-2))):
            out = transform(out)
            if out is None:    # every instance filtered: the dataset would draw another image
                break
            assert_in_step(out)
        if out is None:
            filtered_out += 1
            continue
        np.testing.assert_array_equal(out['gt_bboxes'], mask_tight_boxes(out['gt_masks']))
        assert (out['gt_bboxes'][:, 2:] > out['gt_bboxes'][:, :2]).all()
        if out['scale_factor'][0] >= 0.5:  # smaller, bilinear blends neighbouring instances
            assert_aligned(out, cut=True)
            checked_on_image += 1
        height, width = out['img'].shape[:2]
        padded = Pad(size=(96, 96), pad_val=dict(img=(114, 114, 114)))(dict(out))
        assert padded['img'].shape[:2] == padded['gt_masks'].shape[1:] == (96, 96)
        np.testing.assert_array_equal(padded['img'][:height, :width], out['img'])
        assert (padded['img'][height:] == 114).all() and (padded['img'][:, width:] == 114).all()
        np.testing.assert_array_equal(padded['gt_bboxes'], mask_tight_boxes(padded['gt_masks']))
    assert filtered_out < 12 and checked_on_image > 0
