"""Resize, RandomFlip and Pad keep boxes and masks on the image (hand-computed cases)."""
from __future__ import annotations

import numpy as np
import pytest
from mmcv.transforms import RandomChoiceResize
from mmengine.registry import DefaultScope

from rcnn_det.datasets.transforms import Pad, RandomFlip, Resize, resize_masks
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


def test_resize_masks_is_pixel_centre_aligned():
    mask = np.zeros((1, 4, 4), np.uint8)
    mask[0, 1:3, 1:3] = 1
    down = resize_masks(mask, (2, 2))  # pixel centres 0.5, 1.5 -> input pixels 1 and 3
    np.testing.assert_array_equal(down[0], [[1, 0], [0, 0]])
    assert resize_masks(np.zeros((0, 4, 4), np.uint8), (8, 8)).shape == (0, 8, 8)


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
