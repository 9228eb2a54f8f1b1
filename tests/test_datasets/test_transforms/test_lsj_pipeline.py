"""Co-DINO's LSJ + CopyPaste training data, built from the config dicts of mmdetection's
``projects/CO-DETR/configs/codino/co_dino_5scale_r50_lsj_8xb2_1x_coco.py`` (its ``image_size``
made 64 to stay fast), on a generated COCO dataset, then batched by its data preprocessor.

Each generated image holds three instances (rectangles, triangles, octagons; one a crowd RLE)
painted into image channel 0 with their label's code, so a mask can be checked against the
pixels under it; one more image has no annotation.
"""
from __future__ import annotations

import copy
import json

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from rcnn_det.datasets import CocoDataset, MultiImageMixDataset
from rcnn_det.datasets.samplers.sampler import SampleIndex
from rcnn_det.datasets.transforms import mask_tight_boxes, segmentation_to_mask
from rcnn_det.models.data_preprocessors import DetDataPreprocessor
from rcnn_det.registry import DATASETS, MODELS

IMAGE_SIZE = (64, 64)
CATEGORIES = [dict(id=5, name='square'), dict(id=2, name='triangle'), dict(id=9, name='octagon')]
CODES = (60, 120, 180)                    # channel-0 value of labels 0, 1, 2
LABEL_OF = {2: 0, 5: 1, 9: 2}             # labels follow the category ids' order

# Co-DINO LSJ, copied from the config; only image_size differs.
LOAD_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=IMAGE_SIZE, ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_type='absolute_range', crop_size=IMAGE_SIZE,
         recompute_bbox=True, allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size=IMAGE_SIZE, pad_val=dict(img=(114, 114, 114))),
]
TRAIN_PIPELINE = [dict(type='CopyPaste', max_num_pasted=100), dict(type='PackDetInputs')]
DATA_PREPROCESSOR = dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                         std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_mask=True,
                         batch_augments=[dict(type='BatchFixedSizePad', size=IMAGE_SIZE,
                                              pad_mask=True)])


def polygon(points) -> list[list[float]]:
    return [[float(v) for p in points for v in p]]


def octagon(cx, cy, r):
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in np.arange(8) * np.pi / 4]


def crowd_rle(height, width, box):
    bitmap = np.zeros((height, width), np.uint8, order='F')
    x1, y1, x2, y2 = box
    bitmap[y1:y2, x1:x2] = 1
    rle = mask_utils.encode(bitmap)
    return dict(size=rle['size'], counts=rle['counts'].decode())


# (file, width, height, [(category id, segmentation maker, iscrowd)])
IMAGES = [
    ('a.png', 96, 64, [(5, lambda h, w: polygon([(8, 6), (40, 6), (40, 30), (8, 30)]), 0),
                       (2, lambda h, w: polygon([(50, 10), (90, 10), (50, 50)]), 0),
                       (9, lambda h, w: polygon(octagon(25, 48, 12)), 0)]),
    ('b.png', 56, 80, [(9, lambda h, w: polygon(octagon(28, 20, 16)), 0),
                       (5, lambda h, w: crowd_rle(h, w, (4, 44, 30, 76)), 1),
                       (2, lambda h, w: polygon([(34, 46), (54, 46), (54, 78)]), 0)]),
    ('c.png', 40, 40, [(5, lambda h, w: polygon([(2, 2), (20, 2), (20, 20), (2, 20)]), 0),
                       (5, lambda h, w: polygon([(22, 22), (38, 22), (38, 38), (22, 38)]), 0),
                       (2, lambda h, w: polygon([(24, 2), (38, 2), (24, 16)]), 0)]),
    ('d.png', 120, 90, [(9, lambda h, w: polygon(octagon(60, 45, 30)), 0),
                        (2, lambda h, w: polygon([(4, 4), (50, 4), (4, 40)]), 0),
                        (5, lambda h, w: polygon([(96, 60), (116, 60), (116, 86), (96, 86)]),
                         0)]),
    ('empty.png', 48, 48, []),
]


def write_dataset(root) -> None:
    """root/ann.json and root/imgs/*.png: each mask painted with its label's code."""
    (root / 'imgs').mkdir(parents=True)
    images, annotations = [], []
    for img_id, (name, width, height, instances) in enumerate(IMAGES, start=1):
        images.append(dict(id=img_id, file_name=name, width=width, height=height))
        pixels = np.zeros((height, width, 3), np.uint8)
        for cat_id, make, iscrowd in instances:
            segm = make(height, width)
            mask = segmentation_to_mask(segm, height, width).astype(bool)
            pixels[mask, 0] = CODES[LABEL_OF[cat_id]]
            ys, xs = np.nonzero(mask)
            annotations.append(dict(
                id=len(annotations) + 1, image_id=img_id, category_id=cat_id,
                iscrowd=iscrowd, segmentation=segm, area=float(mask.sum()),
                bbox=[float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()),
                      float(ys.max() + 1 - ys.min())]))
        cv2.imwrite(str(root / 'imgs' / name), pixels)
    (root / 'ann.json').write_text(json.dumps(dict(images=images, annotations=annotations,
                                                   categories=CATEGORIES)))


def lsj_dataset_cfg(root) -> dict:
    """train_dataloader.dataset of ssj_scp_270k_coco-instance.py as co_dino_5scale_r50_lsj
    overrides it."""
    return dict(type='MultiImageMixDataset',
                dataset=dict(type='CocoDataset', data_root=str(root),
                             ann_file='ann.json', data_prefix=dict(img='imgs/'),
                             filter_cfg=dict(filter_empty_gt=False),
                             pipeline=copy.deepcopy(LOAD_PIPELINE)),
                pipeline=copy.deepcopy(TRAIN_PIPELINE))


@pytest.fixture(scope='module')
def lsj_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp('lsj_coco')
    write_dataset(root)
    return DATASETS.build(lsj_dataset_cfg(root))


def assert_masks_on_image(img: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> int:
    """The pixels inside each mask show its label's code (channel 0); returns how many masks
    were large enough to check (an eroded interior of at least 10 px)."""
    checked = 0
    for mask, label in zip(masks, labels):
        interior = cv2.erode(mask, np.ones((5, 5), np.uint8)).astype(bool)
        if interior.sum() >= 10:
            assert abs(np.median(img[..., 0][interior]) - CODES[label]) <= 10, f'label {label}'
            checked += 1
    return checked


def test_config_builds_rcnn_det_parts(lsj_dataset):
    assert type(lsj_dataset) is MultiImageMixDataset
    assert type(lsj_dataset.dataset) is CocoDataset
    assert lsj_dataset.pipeline_types == ['CopyPaste', 'PackDetInputs']
    loaded = [type(t).__module__ + '.' + type(t).__name__
              for t in lsj_dataset.dataset.pipeline.transforms]
    assert all(name.startswith('rcnn_det.') for name in loaded), loaded
    assert len(lsj_dataset) == len(IMAGES)


def test_lsj_samples_keep_boxes_masks_and_image_aligned(lsj_dataset):
    max_own = max(len(instances) for *_, instances in IMAGES)
    most, checked, flipped = 0, 0, set()
    for seed in range(24):
        packed = lsj_dataset[SampleIndex(seed % len(IMAGES), seed=1000 + seed)]
        inputs, sample = packed['inputs'], packed['data_samples']
        assert inputs.shape == (3, *IMAGE_SIZE) and inputs.dtype == torch.uint8
        assert sample.img_shape == IMAGE_SIZE      # mmcv's Pad writes the padded size
        flipped.add(sample.flip)
        img = inputs.permute(1, 2, 0).numpy()
        for instances in (sample.gt_instances, sample.ignored_instances):
            boxes, masks = instances.bboxes.numpy(), instances.masks.numpy()
            labels = instances.labels.numpy()
            assert boxes.dtype == np.float32 and masks.dtype == np.uint8
            assert masks.shape == (len(boxes), *IMAGE_SIZE) and labels.shape == (len(boxes),)
            # recompute_bbox, flip and CopyPaste keep every box the tight box of its mask
            np.testing.assert_array_equal(boxes, mask_tight_boxes(masks))
            checked += assert_masks_on_image(img, masks, labels)
        gt_masks = sample.gt_instances.masks
        if len(gt_masks):   # after CopyPaste no pixel belongs to two instances
            assert gt_masks.sum(0).max() <= 1
        most = max(most, len(sample.gt_instances) + len(sample.ignored_instances))
    assert most > max_own      # some sample holds instances pasted from another image
    assert checked > 20 and flipped == {True, False}


def test_lsj_samples_are_fixed_by_their_seed(lsj_dataset):
    first = lsj_dataset[SampleIndex(3, seed=7)]
    np.random.seed(99)
    again = lsj_dataset[SampleIndex(3, seed=7)]
    torch.testing.assert_close(first['inputs'], again['inputs'])
    torch.testing.assert_close(first['data_samples'].gt_instances.masks,
                               again['data_samples'].gt_instances.masks)
    other = lsj_dataset[SampleIndex(3, seed=8)]
    assert not torch.equal(first['inputs'], other['inputs'])


def test_lsj_batch_through_the_data_preprocessor(lsj_dataset):
    packed = [lsj_dataset[SampleIndex(i, seed=50 + i)] for i in range(2)]
    pre = MODELS.build(DATA_PREPROCESSOR)
    assert isinstance(pre, DetDataPreprocessor)
    out = pre(dict(inputs=[p['inputs'] for p in packed],
                   data_samples=[p['data_samples'] for p in packed]), training=True)
    assert out['inputs'].shape == (2, 3, *IMAGE_SIZE) and out['inputs'].dtype == torch.float32
    for sample in out['data_samples']:
        assert sample.batch_input_shape == IMAGE_SIZE == sample.pad_shape
        masks = sample.gt_instances.masks
        assert masks.shape[1:] == IMAGE_SIZE
        np.testing.assert_array_equal(sample.gt_instances.bboxes.numpy(),
                                      mask_tight_boxes(masks.numpy()))


def test_a_smaller_pad_is_completed_by_batch_fixed_size_pad(tmp_path):
    """LSJ at 48 in the pipeline, BatchFixedSizePad to 64: images, masks and metainfo grow."""
    write_dataset(tmp_path)
    cfg = lsj_dataset_cfg(tmp_path)
    load = cfg['dataset']['pipeline']
    load[2]['scale'] = load[3]['crop_size'] = load[6]['size'] = (48, 48)
    dataset = DATASETS.build(cfg)
    packed = [dataset[SampleIndex(i, seed=i)] for i in (0, 3)]
    before = [p['data_samples'].gt_instances.masks.clone() for p in packed]
    out = MODELS.build(DATA_PREPROCESSOR)(
        dict(inputs=[p['inputs'] for p in packed],
             data_samples=[p['data_samples'] for p in packed]), training=True)
    assert out['inputs'].shape == (2, 3, 64, 64)
    assert (out['inputs'][:, :, 48:] == 0).all() and (out['inputs'][:, :, :, 48:] == 0).all()
    for sample, masks in zip(out['data_samples'], before):
        assert sample.batch_input_shape == (64, 64) == sample.pad_shape
        assert sample.gt_instances.masks.shape == (len(masks), 64, 64)
        torch.testing.assert_close(sample.gt_instances.masks[:, :48, :48], masks)
        assert not sample.gt_instances.masks[:, 48:].any()


def test_a_rejected_crop_is_retried_on_another_image(tmp_path):
    """RandomCrop without negative crops returns None for the image without boxes; mmengine's
    dataset (training) then draws other images until one passes, as in mmdetection."""
    write_dataset(tmp_path)
    dataset = CocoDataset(ann_file='ann.json', data_root=str(tmp_path),
                          data_prefix=dict(img='imgs/'),
                          pipeline=[dict(type='LoadImageFromFile'),
                                    dict(type='LoadAnnotations', with_mask=True),
                                    dict(type='RandomCrop', crop_size=(16, 16))])
    empty_id = len(IMAGES)
    for seed in range(5):
        out = dataset[SampleIndex(empty_id - 1, seed=seed)]
        assert out['img_id'] != empty_id and len(out['gt_bboxes']) > 0
        assert out['img'].shape[:2] == (16, 16)
