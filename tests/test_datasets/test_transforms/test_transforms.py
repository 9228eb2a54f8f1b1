"""Resize, RandomFlip and Pad keep boxes and masks on the image (hand-computed cases)."""
from __future__ import annotations

import numpy as np
import pytest
from mmcv.transforms import RandomChoiceResize
from mmengine.registry import DefaultScope

from rcnn_det.datasets.transforms import (Pad, RandomFlip, Resize, nearest_source_indices,
                                          resize_masks)
from rcnn_det.registry import TRANSFORMS


def sample(height=30, width=40):
    """An image whose box [2, 3, 12, 8] is also painted into the image and its mask."""
    img = np.zeros((height, width, 3), np.uint8)
    img[3:8, 2:12] = 255
    mask = np.zeros((1, height, width), np.uint8)
    mask[0, 3:8, 2:12] = 1
    return dict(img=img, img_shape=(height, width), ori_shape=(height, width),
                gt_bboxes=np.array([[2, 3, 12, 8]], np.float32), gt_masks=mask,
                gt_bboxes_labels=np.array([0]), gt_ignore_flags=np.array([False]))


def test_resize_scales_boxes_and_masks():
    out = Resize(scale=(80, 60))(sample())
    assert out['img'].shape == (60, 80, 3) and out['img_shape'] == (60, 80)
    assert out['scale_factor'] == (2.0, 2.0)
    np.testing.assert_array_equal(out['gt_bboxes'], [[4, 6, 24, 16]])
    assert out['gt_bboxes'].dtype == np.float32
    expected = np.zeros((1, 60, 80), np.uint8)
    expected[0, 6:16, 4:24] = 1
    np.testing.assert_array_equal(out['gt_masks'], expected)


def test_resize_anisotropic_scale_factor_is_w_h():
    out = Resize(scale=(20, 60))(sample())
    assert out['scale_factor'] == (0.5, 2.0)
    np.testing.assert_array_equal(out['gt_bboxes'], [[1, 6, 6, 16]])
    assert out['gt_masks'].shape == (1, 60, 20)


def test_resize_keep_ratio_and_clip():
    results = sample()
    results['gt_bboxes'] = np.array([[30, 20, 50, 40]], np.float32)  # crosses the border
    out = Resize(scale=(80, 80), keep_ratio=True)(results)
    assert out['img_shape'] == (60, 80) and out['scale_factor'] == (2.0, 2.0)
    np.testing.assert_array_equal(out['gt_bboxes'], [[60, 40, 80, 60]])
    unclipped = Resize(scale=(80, 80), keep_ratio=True, clip_object_border=False)(sample())
    np.testing.assert_array_equal(unclipped['gt_bboxes'], [[4, 6, 24, 16]])


def test_resize_masks_samples_the_top_left_source_pixel():
    mask = np.zeros((1, 4, 4), np.uint8)
    mask[0, 1:3, 1:3] = 1
    down = resize_masks(mask, (2, 2))  # output pixel i <- input pixel floor(i * 4 / 2) = 0, 2
    np.testing.assert_array_equal(down[0], [[0, 0], [0, 1]])
    up = resize_masks(mask, (6, 6))    # i <- floor(i * 4 / 6) = 0, 0, 1, 2, 2, 3
    np.testing.assert_array_equal(up[0], mask[0][np.ix_([0, 0, 1, 2, 2, 3], [0, 0, 1, 2, 2, 3])])
    assert resize_masks(np.zeros((0, 4, 4), np.uint8), (8, 8)).shape == (0, 8, 8)


def loop_resize(masks: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Brute-force reference: output pixel (i, j) <- input pixel (floor(i H / h), floor(j W / w)),
    in exact integer arithmetic."""
    num, height, width = masks.shape
    out_h, out_w = out_shape
    out = np.zeros((num, out_h, out_w), masks.dtype)
    for n in range(num):
        for i in range(out_h):
            for j in range(out_w):
                out[n, i, j] = masks[n, i * height // out_h, j * width // out_w]
    return out


# (H, W) -> (h, w): integer and non-integer ratios, up and down, mixed, identity, one pixel.
RESIZE_CASES = [((30, 40), (60, 80)), ((30, 40), (15, 20)), ((30, 40), (47, 71)),
                ((30, 40), (13, 17)), ((30, 40), (61, 23)), ((30, 40), (30, 40)),
                ((7, 9), (1, 1)), ((1, 1), (5, 3)), ((64, 48), (100, 75)), ((53, 97), (29, 41))]


def test_mask_align_centres_samples_under_each_pixel_centre():
    mask = np.zeros((1, 4, 4), np.uint8)
    mask[0, 1:3, 1:3] = 1
    down = resize_masks(mask, (2, 2), align_centres=True)   # i <- floor((i + .5) * 2) = 1, 3
    np.testing.assert_array_equal(down[0], [[1, 0], [0, 0]])
    up = resize_masks(mask, (6, 6), align_centres=True)     # floor((i + .5) * 4 / 6)
    rows = [0, 1, 1, 2, 3, 3]
    np.testing.assert_array_equal(up[0], mask[0][np.ix_(rows, rows)])
    # through the transform: the switch, default off (mmdetection's)
    results = dict(img=np.zeros((4, 4, 3), np.uint8), gt_masks=mask.copy())
    on = Resize(scale=(6, 6), keep_ratio=False, mask_align_centres=True).transform(dict(results))
    off = Resize(scale=(6, 6), keep_ratio=False).transform(dict(results))
    np.testing.assert_array_equal(on['gt_masks'], up)
    np.testing.assert_array_equal(off['gt_masks'], resize_masks(mask, (6, 6)))
    assert not np.array_equal(on['gt_masks'], off['gt_masks'])


@pytest.mark.parametrize('in_shape, out_shape', RESIZE_CASES)
def test_resize_masks_matches_loop_reference(in_shape, out_shape):
    masks = (np.random.default_rng(0).random((3, *in_shape)) < 0.5).astype(np.uint8)
    out = resize_masks(masks, out_shape)
    assert out.shape == (3, *out_shape) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, loop_resize(masks, out_shape))


def test_nearest_source_indices_round_like_cv2_not_exactly():
    # 2 -> 98 px: 49 * (1 / (98 / 2)) is 0.999... in float64, so cv2 (and mmdet) copy pixel 0
    # where the exact floor(49 * 2 / 98) is 1.
    assert nearest_source_indices(2, 98)[49] == 0 and 49 * 2 // 98 == 1
    assert nearest_source_indices(2, 98)[50] == 1
    np.testing.assert_array_equal(nearest_source_indices(5, 5), np.arange(5))


@pytest.mark.parametrize('in_shape, out_shape',
                         RESIZE_CASES + [((2, 3), (98, 147)), ((4, 2), (206, 196)),
                                         ((480, 640), (800, 1067)), ((427, 640), (333, 500))])
def test_resize_masks_matches_cv2_inter_nearest(in_shape, out_shape):
    cv2 = pytest.importorskip('cv2')
    masks = (np.random.default_rng(1).random((2, *in_shape)) < 0.5).astype(np.uint8)
    expected = np.stack([cv2.resize(m, out_shape[::-1], interpolation=cv2.INTER_NEAREST)
                         for m in masks]).reshape(2, *out_shape)
    np.testing.assert_array_equal(resize_masks(masks, out_shape), expected)


@pytest.mark.parametrize('kwargs', [dict(scale=(71, 47)), dict(scale=(17, 13)),
                                    dict(scale=(200, 97), keep_ratio=True),
                                    dict(scale_factor=0.65, keep_ratio=True)])
def test_resize_transform_masks_match_mmdet_bitmap_masks(kwargs):
    """mmdet's Resize: BitmapMasks.resize (mmcv.imresize) to img_shape, or with keep_ratio
    BitmapMasks.rescale (mmcv.imrescale) by the same scale as the image; both 'nearest'."""
    pytest.importorskip('cv2')
    import mmcv
    results = sample()
    masks = (np.random.default_rng(2).random((3, 30, 40)) < 0.5).astype(np.uint8)
    results.update(gt_masks=masks, gt_bboxes=np.zeros((3, 4), np.float32),
                   gt_bboxes_labels=np.zeros(3, np.int64), gt_ignore_flags=np.zeros(3, bool))
    out = Resize(**kwargs)(results)
    if kwargs.get('keep_ratio'):
        expected = [mmcv.imrescale(m, out['scale'], interpolation='nearest') for m in masks]
    else:
        expected = [mmcv.imresize(m, out['img_shape'][::-1], interpolation='nearest')
                    for m in masks]
    np.testing.assert_array_equal(out['gt_masks'], np.stack(expected))


@pytest.mark.parametrize('direction, box', [('horizontal', [28, 3, 38, 8]),
                                            ('vertical', [2, 22, 12, 27]),
                                            ('diagonal', [28, 22, 38, 27])])
def test_flip_boxes_masks_image(direction, box):
    flip = RandomFlip(prob=1.0, direction=direction)
    out = flip(sample())
    assert out['flip'] is True and out['flip_direction'] == direction
    np.testing.assert_array_equal(out['gt_bboxes'], [box])
    x1, y1, x2, y2 = box
    expected = np.zeros((1, 30, 40), np.uint8)
    expected[0, y1:y2, x1:x2] = 1
    np.testing.assert_array_equal(out['gt_masks'], expected)
    np.testing.assert_array_equal(out['img'][..., 0], expected[0] * 255)
    assert out['gt_masks'].flags.c_contiguous
    back = flip(out)  # flipping twice is the identity
    original = sample()
    for key in ('img', 'gt_bboxes', 'gt_masks'):
        np.testing.assert_array_equal(back[key], original[key])


def test_no_flip():
    out = RandomFlip(prob=0.0)(sample())
    assert out['flip'] is False and out['flip_direction'] is None
    np.testing.assert_array_equal(out['gt_bboxes'], [[2, 3, 12, 8]])


def test_pad_pads_masks_bottom_right():
    out = Pad(size_divisor=16)(sample())
    assert out['img'].shape == (32, 48, 3) and out['pad_shape'][:2] == (32, 48)
    assert out['gt_masks'].shape == (1, 32, 48)
    np.testing.assert_array_equal(out['gt_masks'][:, :30, :40], sample()['gt_masks'])
    assert out['gt_masks'][:, 30:].sum() == 0 and out['gt_masks'][:, :, 40:].sum() == 0
    np.testing.assert_array_equal(out['gt_bboxes'], [[2, 3, 12, 8]])


def test_registered_names_resolve_to_ours():
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        assert type(TRANSFORMS.build(dict(type='Resize', scale=(8, 8)))) is Resize
        assert type(TRANSFORMS.build(dict(type='RandomFlip', prob=0.5))) is RandomFlip
        assert type(TRANSFORMS.build(dict(type='Pad', size_divisor=8))) is Pad


def test_random_choice_resize_builds_our_resize():
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        choice = TRANSFORMS.build(dict(type='RandomChoiceResize', scales=[(80, 60)],
                                       keep_ratio=True))
    assert type(choice) is RandomChoiceResize and type(choice.resize) is Resize
    out = choice(sample())
    assert out['gt_masks'].shape == (1, 60, 80)
    np.testing.assert_array_equal(out['gt_bboxes'], [[4, 6, 24, 16]])
