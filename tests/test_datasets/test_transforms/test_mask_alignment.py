"""Every geometric transform keeps masks, boxes, labels and ignore flags aligned with the image.

The synthetic sample holds five separated instances (two rectangles, one touching the right
border, an ellipse, an L-shaped polygon and an octagon). Channel 0 of the image paints each
instance's mask with its own code, channels 1 and 2 hold each pixel's row and column, so a crop
window can be read off the cropped image. Boxes start as the tight boxes of the masks
(x2/y2 exclusive). test_transforms.py holds the hand-computed single-box cases.

Shape letters: N instances, H x W the image.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from mmengine.registry import DefaultScope
from mmengine.runner import set_random_seed

from rcnn_det.datasets.transforms import (Pad, PackDetInputs, RandomCrop, RandomFlip, Resize,
                                          mask_tight_boxes)
from rcnn_det.models.data_preprocessors import DetDataPreprocessor
from rcnn_det.registry import TRANSFORMS

HEIGHT, WIDTH = 60, 90
KINDS = ('rect', 'ellipse', 'polygon', 'polygon', 'rect')   # indexed by label
CODES = (40, 80, 120, 160, 200)                             # channel-0 value of each label
L_SHAPE = [(6, 32), (30, 32), (30, 40), (16, 40), (16, 55), (6, 55)]
OCTAGON = [(52, 34), (64, 34), (70, 40), (70, 50), (64, 56), (52, 56), (46, 50), (46, 40)]


def draw_masks(height: int, width: int) -> np.ndarray:
    """(5, H, W) uint8 masks of the five instances, at least 9 px apart."""
    masks = np.zeros((5, height, width), np.uint8)
    masks[0, 4:20, 5:30] = 1
    cv2.ellipse(masks[1], (55, 15), (14, 10), 0, 0, 360, 1, thickness=-1)
    cv2.fillPoly(masks[2], [np.array(L_SHAPE, np.int32)], 1)
    cv2.fillPoly(masks[3], [np.array(OCTAGON, np.int32)], 1)
    masks[4, 10:50, 80:90] = 1  # touches the right border
    return masks


def tight_box(mask: np.ndarray) -> np.ndarray:
    """Brute-force reference: [x1, y1, x2 + 1, y2 + 1] of a non-empty (H, W) mask."""
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)


def make_sample(masks: np.ndarray | None = None) -> dict:
    """Results dict as LoadAnnotations(with_mask=True) leaves it; boxes = tight mask boxes."""
    masks = draw_masks(HEIGHT, WIDTH) if masks is None else masks
    num, height, width = masks.shape
    labels = np.arange(num, dtype=np.int64)
    img = np.zeros((height, width, 3), np.uint8)
    for label, mask in zip(labels, masks):
        img[mask.astype(bool), 0] = CODES[label]
    img[..., 1] = np.arange(height)[:, None]
    img[..., 2] = np.arange(width)[None, :]
    return dict(img=img, img_shape=(height, width), ori_shape=(height, width), gt_masks=masks,
                gt_bboxes=np.array([tight_box(m) for m in masks], np.float32).reshape(-1, 4),
                gt_bboxes_labels=labels, gt_ignore_flags=labels % 2 == 1)


def assert_in_step(out: dict) -> None:
    """Shapes and dtypes agree: (N, h, w) uint8 masks on the (h, w) image, N boxes/labels/flags;
    each ignore flag still belongs to its label (odd labels are ignored)."""
    img, masks, labels = out['img'], out['gt_masks'], out['gt_bboxes_labels']
    num = len(labels)
    assert tuple(out['img_shape']) == img.shape[:2]
    assert masks.dtype == np.uint8 and masks.shape == (num, *img.shape[:2])
    assert out['gt_bboxes'].dtype == np.float32 and out['gt_bboxes'].shape == (num, 4)
    np.testing.assert_array_equal(out['gt_ignore_flags'], labels % 2 == 1)


def assert_image_shows_mask(img: np.ndarray, mask: np.ndarray, label: int) -> None:
    """The image's channel 0 paints this label's code where the mask is (within 1 px)."""
    code = CODES[label]
    # Bilinear resizing blends the code with the background up to ~2 px from an edge.
    interior = cv2.erode(mask, np.ones((5, 5), np.uint8)).astype(bool)
    if interior.sum() >= 10:
        assert abs(np.median(img[..., 0][interior]) - code) <= 10, f'label {label}'
    x1, y1, x2, y2 = tight_box(mask).astype(int)
    y0, x0 = max(y1 - 3, 0), max(x1 - 3, 0)
    window = img[y0:y2 + 3, x0:x2 + 3, 0].astype(int)  # only this instance and background
    painted = (window > code / 2) & (window < code + 20)
    box = tight_box(painted) + np.array([x0, y0, x0, y0])
    np.testing.assert_allclose(box, tight_box(mask), atol=1, err_msg=f'label {label}')


def assert_aligned(out: dict, cut: bool = False) -> None:
    """Every mask lies on its box and on the image. ``cut``: a crop may have cut instances,
    so a non-rectangular mask only has to lie inside its clipped box."""
    assert_in_step(out)
    for mask, box, label in zip(out['gt_masks'], out['gt_bboxes'], out['gt_bboxes_labels']):
        if not mask.any():
            assert cut, f'label {label} lost its mask without a crop'
            continue
        tight = tight_box(mask)
        if cut and KINDS[label] != 'rect':
            assert (tight[:2] >= box[:2] - 1).all() and (tight[2:] <= box[2:] + 1).all(), \
                f'label {label}: mask box {tight} outside gt box {box}'
        else:
            np.testing.assert_allclose(tight, box, atol=1, err_msg=f'label {label}')
        if mask.sum() >= 20:
            assert_image_shows_mask(out['img'], mask, label)


def crop_window(out: dict) -> tuple[int, int]:
    """(top, left) of the crop, read off the row / column channels of the cropped image."""
    return int(out['img'][0, 0, 1]), int(out['img'][0, 0, 2])


def expected_crop(sample: dict, top: int, left: int, height: int, width: int,
                  clip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Loop reference: (K,) kept instance indices and their (K, 4) boxes in the window."""
    kept, boxes = [], []
    for i, (x1, y1, x2, y2) in enumerate(sample['gt_bboxes']):
        box = np.array([x1 - left, y1 - top, x2 - left, y2 - top], np.float32)
        clipped = np.array([min(max(box[0], 0), width), min(max(box[1], 0), height),
                            min(max(box[2], 0), width), min(max(box[3], 0), height)])
        if clipped[2] > clipped[0] and clipped[3] > clipped[1]:
            kept.append(i)
            boxes.append(clipped if clip else box)
    return np.array(kept, np.int64), np.array(boxes, np.float32).reshape(-1, 4)


ALIGNING_TRANSFORMS = {
    'resize up, non-integer factors': lambda: Resize(scale=(131, 83)),
    'resize down, non-integer factors': lambda: Resize(scale=(61, 37)),
    'resize by a factor pair': lambda: Resize(scale_factor=(1.3, 0.7)),
    'resize keep ratio up': lambda: Resize(scale=(200, 97), keep_ratio=True),
    'resize keep ratio down': lambda: Resize(scale_factor=0.65, keep_ratio=True),
    'flip horizontal': lambda: RandomFlip(prob=1.0, direction='horizontal'),
    'flip vertical': lambda: RandomFlip(prob=1.0, direction='vertical'),
    'flip diagonal': lambda: RandomFlip(prob=1.0, direction='diagonal'),
    'pad to size': lambda: Pad(size=(101, 77)),
    'pad to divisor': lambda: Pad(size_divisor=32),
}


@pytest.mark.parametrize('name', ALIGNING_TRANSFORMS)
def test_transform_keeps_masks_on_boxes_and_image(name):
    sample = make_sample()
    assert_aligned(sample)  # the fixture itself is aligned
    out = ALIGNING_TRANSFORMS[name]()(make_sample())
    assert len(out['gt_bboxes_labels']) == 5  # nothing dropped, nothing reordered
    np.testing.assert_array_equal(out['gt_bboxes_labels'], sample['gt_bboxes_labels'])
    assert_aligned(out)


def test_pad_to_fixed_size_keeps_mask_content():
    out = Pad(size=(101, 77))(make_sample())  # mmcv's size is (w, h)
    assert out['gt_masks'].shape[1:] == (77, 101) == tuple(out['pad_shape'][:2])
    np.testing.assert_array_equal(out['gt_masks'][:, :HEIGHT, :WIDTH], draw_masks(60, 90))
    assert out['gt_masks'][:, HEIGHT:].sum() == 0 and out['gt_masks'][:, :, WIDTH:].sum() == 0


@pytest.mark.parametrize('crop_type, crop_size, h_range, w_range', [
    ('absolute', (40, 50), (40, 40), (50, 50)),
    ('absolute', (100, 50), (60, 60), (50, 50)),            # at most the image
    ('absolute_range', (30, 70), (30, 60), (30, 70)),
    ('relative', (0.5, 0.75), (30, 30), (68, 68)),          # 67.5 rounds half up
    ('relative_range', (0.4, 0.6), (24, 60), (54, 90)),
])
@pytest.mark.parametrize('clip', [True, False])
def test_random_crop_matches_loop_reference(crop_type, crop_size, h_range, w_range, clip):
    sizes = set()
    for seed in range(8):
        np.random.seed(seed)
        crop = RandomCrop(crop_size, crop_type, allow_negative_crop=True, bbox_clip_border=clip)
        sample, out = make_sample(), crop(make_sample())
        (top, left), (height, width) = crop_window(out), out['img'].shape[:2]
        sizes.add((height, width))
        assert h_range[0] <= height <= h_range[1] and w_range[0] <= width <= w_range[1]
        assert 0 <= top <= HEIGHT - height and 0 <= left <= WIDTH - width
        np.testing.assert_array_equal(out['img'], sample['img'][top:top + height,
                                                                left:left + width])
        kept, boxes = expected_crop(sample, top, left, height, width, clip)
        np.testing.assert_array_equal(out['gt_bboxes_labels'], kept)
        np.testing.assert_array_equal(out['gt_bboxes'], boxes)
        np.testing.assert_array_equal(
            out['gt_masks'], sample['gt_masks'][kept][:, top:top + height, left:left + width])
        if clip:
            assert_aligned(out, cut=True)
        else:
            assert_in_step(out)
    if crop_type.endswith('range'):
        assert len(sizes) > 1  # the size is drawn, not fixed


def test_random_crop_cuts_instances_wider_than_the_window():
    masks = np.zeros((2, HEIGHT, WIDTH), np.uint8)
    masks[0, 5:25, 5:85] = 1                                                   # a long bar
    cv2.ellipse(masks[1], (45, 45), (40, 10), 0, 0, 360, 1, thickness=-1)      # a wide ellipse
    for seed in range(5):
        np.random.seed(seed)
        out = RandomCrop((60, 45))(make_sample(masks))
        top, left = crop_window(out)
        assert top == 0 and out['gt_masks'].shape == (2, 60, 45)
        bar = np.array([max(5 - left, 0), 5, min(85 - left, 45), 25], np.float32)
        assert bar[2] - bar[0] < 80  # really cut
        np.testing.assert_array_equal(out['gt_bboxes'][0], bar)
        np.testing.assert_array_equal(tight_box(out['gt_masks'][0]), bar)
        assert out['gt_masks'][0].sum() == (bar[2] - bar[0]) * 20
        np.testing.assert_array_equal(out['gt_masks'][1], masks[1, :, left:left + 45])
        assert_aligned(out, cut=True)


def test_random_crop_recompute_bbox_gives_tight_mask_boxes():
    recomputed_differs = False
    for seed in range(8):
        np.random.seed(seed)
        clipped = RandomCrop((25, 35), allow_negative_crop=True)(make_sample())
        np.random.seed(seed)
        out = RandomCrop((25, 35), allow_negative_crop=True, recompute_bbox=True)(make_sample())
        assert crop_window(out) == crop_window(clipped)
        np.testing.assert_array_equal(out['gt_bboxes_labels'], clipped['gt_bboxes_labels'])
        np.testing.assert_array_equal(out['gt_masks'], clipped['gt_masks'])
        reference = [tight_box(m) if m.any() else np.zeros(4, np.float32)
                     for m in out['gt_masks']]
        np.testing.assert_array_equal(out['gt_bboxes'], np.array(reference).reshape(-1, 4))
        assert out['gt_bboxes'].dtype == np.float32
        recomputed_differs |= not np.array_equal(out['gt_bboxes'], clipped['gt_bboxes'])
    assert recomputed_differs  # some window cuts an ellipse or polygon off its box corner


def test_mask_tight_boxes_matches_brute_force():
    rng = np.random.default_rng(0)
    masks = (rng.random((40, 9, 13)) < rng.random((40, 1, 1)) ** 4).astype(np.uint8)
    masks[0] = 0
    masks[1] = 1
    boxes = mask_tight_boxes(masks)
    assert boxes.dtype == np.float32 and boxes.shape == (40, 4)
    for mask, box in zip(masks, boxes):
        expected = tight_box(mask) if mask.any() else np.zeros(4, np.float32)
        np.testing.assert_array_equal(box, expected)
    assert mask_tight_boxes(np.zeros((0, 5, 6), np.uint8)).shape == (0, 4)


def test_random_crop_without_boxes_returns_none_unless_negative_crops_allowed():
    masks = np.zeros((1, HEIGHT, WIDTH), np.uint8)
    masks[0, 0:4, 0:4] = 1  # a small instance in the corner: most 20 x 20 windows miss it
    nones = 0
    for seed in range(10):
        np.random.seed(seed)
        kept = RandomCrop((20, 20), allow_negative_crop=True)(make_sample(masks))
        np.random.seed(seed)
        strict = RandomCrop((20, 20))(make_sample(masks))
        top, left = crop_window(kept)
        assert len(kept['gt_bboxes']) == int(top < 4 and left < 4)
        if len(kept['gt_bboxes']):
            assert strict is not None
            continue
        nones += 1
        assert strict is None
        assert kept['img'].shape == (20, 20, 3) and kept['gt_masks'].shape == (0, 20, 20)
        assert kept['gt_masks'].dtype == np.uint8 and kept['gt_bboxes'].shape == (0, 4)
        assert kept['gt_bboxes_labels'].shape == (0,) and kept['gt_ignore_flags'].shape == (0,)
    assert nones > 0
    no_instances = make_sample(np.zeros((0, HEIGHT, WIDTH), np.uint8))
    assert RandomCrop((20, 20))(dict(no_instances)) is None
    assert RandomCrop((20, 20), allow_negative_crop=True)(no_instances)['img'].shape[:2] == (20, 20)


def test_random_crop_without_boxes_still_crops_masks():
    sample = make_sample()
    for key in ('gt_bboxes', 'gt_bboxes_labels', 'gt_ignore_flags'):
        del sample[key]
    np.random.seed(0)
    out = RandomCrop((30, 30))(sample)
    top, left = crop_window(out)
    np.testing.assert_array_equal(out['gt_masks'],
                                  draw_masks(HEIGHT, WIDTH)[:, top:top + 30, left:left + 30])


def test_random_crop_is_seeded_like_mmdet():
    """mmengine's seed fixes the crop; draws follow mmdet's order (size, then top, left)."""
    def run(seed):
        set_random_seed(seed)
        return RandomCrop((0.3, 0.5), 'relative_range', allow_negative_crop=True)(make_sample())

    first, again = run(3), run(3)
    for key in ('img', 'gt_bboxes', 'gt_masks', 'gt_bboxes_labels'):
        np.testing.assert_array_equal(first[key], again[key])
    windows = set()
    for seed in range(6):
        out = run(seed)
        np.random.seed(seed)
        low = np.array([0.3, 0.5], np.float32)
        fractions = low + np.random.rand(2) * (1 - low)
        height, width = int(HEIGHT * fractions[0] + 0.5), int(WIDTH * fractions[1] + 0.5)
        top = np.random.randint(0, HEIGHT - height + 1)
        left = np.random.randint(0, WIDTH - width + 1)
        assert (*crop_window(out), *out['img'].shape[:2]) == (top, left, height, width)
        windows.add((top, left, height, width))
    assert len(windows) > 1


@pytest.mark.parametrize('seed', range(4))
def test_chain_of_all_transforms(seed):
    np.random.seed(seed)
    pipeline = [Resize(scale=(117, 79)),
                RandomFlip(prob=1.0, direction=['horizontal', 'vertical', 'diagonal']),
                RandomCrop((0.6, 0.6), 'relative_range', allow_negative_crop=True),
                Pad(size_divisor=32)]
    out = make_sample()
    for transform in pipeline:
        out = transform(out)
        assert_aligned(out, cut=True)
    assert out['gt_masks'].shape[1:] == tuple(out['pad_shape'][:2])
    assert out['img'].shape[0] % 32 == 0 and out['img'].shape[1] % 32 == 0


def test_preprocessor_pads_masks_with_the_batch():
    pack = PackDetInputs()
    packed = [pack(make_sample()), pack(Resize(scale=(47, 71))(make_sample()))]
    before = [p['data_samples'].gt_instances.masks.clone() for p in packed]
    pre = DetDataPreprocessor(pad_mask=True, pad_size_divisor=32)
    out = pre(dict(inputs=[p['inputs'] for p in packed],
                   data_samples=[p['data_samples'] for p in packed]), training=True)
    assert out['inputs'].shape == (2, 3, 96, 96)
    for i, sample in enumerate(out['data_samples']):
        gt = sample.gt_instances
        height, width = before[i].shape[1:]
        assert sample.batch_input_shape == (96, 96)
        assert gt.labels.tolist() == [0, 2, 4]  # ignored (odd) labels went to ignored_instances
        assert gt.masks.dtype == torch.uint8 and gt.masks.shape == (3, 96, 96)
        torch.testing.assert_close(gt.masks[:, :height, :width], before[i])
        assert gt.masks[:, height:].sum() == 0 and gt.masks[:, :, width:].sum() == 0
        img = out['inputs'][i].permute(1, 2, 0).round().to(torch.uint8).numpy()
        assert_aligned(dict(img=img, img_shape=img.shape[:2], gt_masks=gt.masks.numpy(),
                            gt_bboxes=gt.bboxes.numpy(), gt_bboxes_labels=gt.labels.numpy(),
                            gt_ignore_flags=np.zeros(3, bool)))


@pytest.mark.parametrize('kwargs, names', [
    (dict(crop_size=(10, 10), crop_type='abs'), 'crop_type'),
    (dict(crop_size=10), 'crop_size'),
    (dict(crop_size=(1, 2, 3)), 'crop_size'),
    (dict(crop_size=(0, 10)), 'crop_size'),
    (dict(crop_size=(10.5, 10)), 'crop_size'),
    (dict(crop_size=(30, 20), crop_type='absolute_range'), 'min <= max'),
    (dict(crop_size=(0, 0.5), crop_type='relative'), 'crop_size'),
    (dict(crop_size=(1.2, 0.5), crop_type='relative_range'), 'crop_size'),
])
def test_random_crop_rejects_bad_arguments(kwargs, names):
    with pytest.raises(ValueError, match=names):
        RandomCrop(**kwargs)


def test_random_crop_is_registered():
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        crop = TRANSFORMS.build(dict(type='RandomCrop', crop_size=(0.5, 0.5),
                                     crop_type='relative', recompute_bbox=True))
    assert type(crop) is RandomCrop and crop.recompute_bbox
    assert "crop_type='relative'" in repr(crop)
