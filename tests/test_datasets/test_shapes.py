"""The shapes generator (determinism, geometry, atomic concurrent writes) and ShapesDataset."""
from __future__ import annotations

import itertools
import json
import multiprocessing
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from rcnn_det.datasets import SHAPE_CLASSES, ShapesDataset, generate_shapes_dataset
from rcnn_det.datasets.shapes import MARGIN, shapes_dataset_ready
from rcnn_det.registry import DATASETS

SMALL = dict(num_train=8, num_val=3, seed=5, img_size=(64, 112), obj_size=(12, 40),
             max_objects=4)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file()}


def load(root: Path, split: str) -> dict:
    return json.loads((root / 'annotations' / f'instances_{split}.json').read_text())


@pytest.fixture(scope='module')
def shapes_root(tmp_path_factory) -> Path:
    return generate_shapes_dataset(tmp_path_factory.mktemp('gen') / 'shapes', **SMALL)


def test_layout_and_categories(shapes_root):
    assert sorted(p.name for p in (shapes_root / 'train').iterdir()) == \
        [f'{i:06d}.png' for i in range(8)]
    assert len(list((shapes_root / 'val').iterdir())) == 3
    coco = load(shapes_root, 'train')
    assert [(c['id'], c['name']) for c in coco['categories']] == \
        list(enumerate(SHAPE_CLASSES, start=1))
    assert json.loads((shapes_root / 'shapes_meta.json').read_text())['img_size'] == [64, 112]
    for img in coco['images']:
        assert 64 <= img['width'] <= 112 and 64 <= img['height'] <= 112
    counts = [sum(a['image_id'] == img['id'] for a in coco['annotations'])
              for img in coco['images']]
    assert 1 <= min(counts) and max(counts) <= 4
    assert [a['id'] for a in coco['annotations']] == list(range(1, len(coco['annotations']) + 1))


def test_same_arguments_same_bytes(shapes_root, tmp_path):
    again = generate_shapes_dataset(tmp_path / 'again', **SMALL)
    assert tree_bytes(again) == tree_bytes(shapes_root)
    other = generate_shapes_dataset(tmp_path / 'other', **{**SMALL, 'seed': 6})
    assert tree_bytes(other)['train/000000.png'] != tree_bytes(shapes_root)['train/000000.png']


def test_val_split_does_not_depend_on_num_train(shapes_root, tmp_path):
    fewer = generate_shapes_dataset(tmp_path / 'fewer', **{**SMALL, 'num_train': 2})
    assert (fewer / 'val' / '000002.png').read_bytes() == \
        (shapes_root / 'val' / '000002.png').read_bytes()
    assert load(fewer, 'val') == load(shapes_root, 'val')


def test_boxes_masks_and_pixels_agree(shapes_root):
    for split in ('train', 'val'):
        coco = load(shapes_root, split)
        for img_info in coco['images']:
            img = cv2.imread(str(shapes_root / split / img_info['file_name']))
            h, w = img_info['height'], img_info['width']
            assert img.shape == (h, w, 3)
            anns = [a for a in coco['annotations'] if a['image_id'] == img_info['id']]
            for ann in anns:
                rle = mask_utils.merge(mask_utils.frPyObjects(ann['segmentation'], h, w))
                mask = mask_utils.decode(rle).astype(bool)
                ys, xs = np.nonzero(mask)
                x, y, bw, bh = ann['bbox']
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + bw, y + bh)
                assert ann['area'] == mask.sum() and ann['iscrowd'] == 0
                # Painted from the polygon: one flat colour on exactly the mask's pixels.
                assert len(np.unique(img[mask], axis=0)) == 1
                ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
                assert not (img[ring & ~mask] == img[mask][0]).all(axis=1).all()


def test_objects_do_not_overlap_and_stay_inside(shapes_root):
    coco = load(shapes_root, 'train')
    for img in coco['images']:
        boxes = [a['bbox'] for a in coco['annotations'] if a['image_id'] == img['id']]
        for x, y, bw, bh in boxes:
            assert x >= MARGIN - 1 and y >= MARGIN - 1
            assert x + bw <= img['width'] - MARGIN + 1 and y + bh <= img['height'] - MARGIN + 1
        for (x1, y1, w1, h1), (x2, y2, w2, h2) in itertools.combinations(boxes, 2):
            assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1


def test_existing_copy_is_reused_and_other_meta_regenerates(tmp_path):
    root = generate_shapes_dataset(tmp_path / 's', **{**SMALL, 'num_train': 2, 'num_val': 1})
    stamp = (root / 'train' / '000000.png').stat().st_mtime_ns
    generate_shapes_dataset(root, **{**SMALL, 'num_train': 2, 'num_val': 1})
    assert (root / 'train' / '000000.png').stat().st_mtime_ns == stamp
    generate_shapes_dataset(root, **{**SMALL, 'num_train': 3, 'num_val': 1})
    assert len(load(root, 'train')['images']) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ['s']  # no temp folders left


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'precious.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='not a shapes dataset'):
        generate_shapes_dataset(tmp_path / 'mine', **{**SMALL, 'num_train': 1, 'num_val': 0})
    assert (tmp_path / 'mine' / 'precious.txt').read_text() == 'keep me'


def test_bad_arguments():
    with pytest.raises(ValueError, match='must fit the smallest image side'):
        generate_shapes_dataset('/nonexistent', img_size=(50, 60), obj_size=(10, 50))


def generate_after(barrier, root: str) -> None:
    barrier.wait()  # both processes start writing at the same moment
    generate_shapes_dataset(root, **SMALL)


def test_two_processes_at_once(shapes_root, tmp_path):
    ctx = multiprocessing.get_context('fork')
    barrier = ctx.Barrier(2)
    root = tmp_path / 'shared'
    procs = [ctx.Process(target=generate_after, args=(barrier, str(root))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert tree_bytes(root) == tree_bytes(shapes_root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['shared']


PIPELINE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_mask=True),
            dict(type='RandomChoiceResize', scales=[(160, 96), (200, 120)], keep_ratio=True),
            dict(type='RandomFlip', prob=0.5), dict(type='PackDetInputs')]


def test_shapes_dataset_generates_then_loads_through_the_pipeline(tmp_path):
    cfg = dict(type='ShapesDataset', data_root=str(tmp_path / 'shapes'),
               shapes_cfg={**SMALL, 'num_train': 4, 'num_val': 2}, pipeline=PIPELINE,
               filter_cfg=dict(filter_empty_gt=True, min_size=32))
    assert not shapes_dataset_ready(tmp_path / 'shapes', **cfg['shapes_cfg'])
    ds = DATASETS.build(cfg)
    assert isinstance(ds, ShapesDataset) and len(ds) == 4
    assert shapes_dataset_ready(tmp_path / 'shapes', **cfg['shapes_cfg'])
    assert ds.metainfo['classes'] == SHAPE_CLASSES
    for idx in range(len(ds)):
        packed = ds[idx]
        sample = packed['data_samples']
        gt = sample.gt_instances
        assert packed['inputs'].shape[1:] == sample.img_shape
        assert len(gt) >= 1 and len(sample.ignored_instances) == 0
        for box, mask in zip(gt.bboxes, gt.masks):
            ys, xs = np.nonzero(mask.numpy())
            mask_box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            np.testing.assert_allclose(box.numpy(), mask_box, atol=1.0)  # upscaled: <= 0.5
    val = DATASETS.build({**cfg, 'ann_file': 'annotations/instances_val.json',
                          'data_prefix': dict(img='val/'), 'test_mode': True})
    assert len(val) == 2 and val[1]['data_samples'].img_path.endswith('val/000001.png')


def test_shapes_cfg_unknown_key(tmp_path):
    with pytest.raises(ValueError, match='num_imgs'):
        ShapesDataset(data_root=str(tmp_path), shapes_cfg=dict(num_imgs=3))


def test_runner_builds_a_dataloader_from_config(tmp_path):
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    dataloader_cfg = dict(
        batch_size=2, num_workers=0,
        sampler=dict(type='DefaultSampler', shuffle=True, seed=0),
        batch_sampler=dict(type='AspectRatioBatchSampler'),
        dataset=dict(type='ShapesDataset', data_root=str(tmp_path / 'shapes'),
                     shapes_cfg={**SMALL, 'num_train': 5, 'num_val': 0}, pipeline=PIPELINE))
    with DefaultScope.overwrite_default_scope('rcnn_det'):  # what Runner does with the config
        loader = Runner.build_dataloader(dataloader_cfg, seed=0)
    batches = list(loader)
    assert sum(len(b['inputs']) for b in batches) == 5
    assert all(isinstance(b['data_samples'][0].gt_instances.bboxes, torch.Tensor)
               for b in batches)
