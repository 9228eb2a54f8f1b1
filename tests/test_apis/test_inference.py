"""init_detector / inference_detector: weights and class names from a checkpoint, the same
predictions for a path, an array and a list, boxes in the original image frame, every detector."""
from __future__ import annotations

import pickle

import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from conftest import (ATSS_DEMO_CONFIG, DEMO_CONFIG, DETR_DEMO_CONFIG, MASK_DEMO_CONFIG,
                      TINY_SHAPES)
from rcnn_det.apis import inference_detector, inference_pipeline, init_detector
from rcnn_det.datasets import SHAPE_CLASSES
from rcnn_det.engine import CheckpointMismatchError
from rcnn_det.registry import DATASETS

# Shrinks the demo configs' test input from 224 px to 128 px (index 1 is their Resize).
SMALL_INPUT = {'test_dataloader.dataset.pipeline.1.scale': (128, 128)}
CKPT_CLASSES = ('disc', 'box', 'wedge', 'spark')  # not the config's: shows where names come from


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """These inputs are small: one thread is as fast, and much faster on a busy machine (threads
    of several processes waiting for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_checkpoint(path, config, meta: dict | None = None, seed: int = 0):
    """An mmengine-style checkpoint of the config's model with random weights."""
    torch.manual_seed(seed)
    model = init_detector(config, cfg_options=SMALL_INPUT)
    torch.save({'state_dict': model.state_dict(),
                'meta': {} if meta is None else meta}, path)
    return path


@pytest.fixture(scope='module')
def faster_ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp('ckpt') / 'faster.pth', DEMO_CONFIG,
                           dict(dataset_meta=dict(classes=CKPT_CLASSES)))


@pytest.fixture(scope='module')
def faster(faster_ckpt):
    return init_detector(DEMO_CONFIG, faster_ckpt, cfg_options=SMALL_INPUT)


@pytest.fixture(scope='module')
def mask_rcnn(tmp_path_factory):
    ckpt = save_checkpoint(tmp_path_factory.mktemp('ckpt') / 'mask.pth', MASK_DEMO_CONFIG,
                           dict(dataset_meta=dict(classes=CKPT_CLASSES)))
    return init_detector(str(MASK_DEMO_CONFIG), str(ckpt), cfg_options=SMALL_INPUT)


@pytest.fixture(scope='module')
def val_paths(tiny_shapes_root) -> list[str]:
    return sorted(str(p) for p in (tiny_shapes_root / 'val').glob('*.png'))


def assert_same_predictions(a, b) -> None:
    pa, pb = a.pred_instances, b.pred_instances
    assert set(pa.keys()) == set(pb.keys())
    for key in pa.keys():
        assert torch.equal(pa[key], pb[key]), key
    assert a.ori_shape == b.ori_shape and a.scale_factor == b.scale_factor


def assert_in_image(sample, shape) -> None:
    """Boxes valid and inside the (H, W) original image; masks of the image's size."""
    h, w = shape
    assert sample.ori_shape == (h, w)
    pred = sample.pred_instances
    boxes = pred.bboxes
    assert len(boxes) > 0, 'random weights still give low-score predictions'
    assert boxes.shape[1] == 4 and len(pred.scores) == len(pred.labels) == len(boxes)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert pred.labels.min() >= 0 and pred.labels.max() < len(SHAPE_CLASSES)
    if 'masks' in pred:
        assert pred.masks.shape == (len(boxes), h, w) and pred.masks.dtype == torch.bool


def test_weights_and_class_names_come_from_the_checkpoint(faster, faster_ckpt):
    state = torch.load(faster_ckpt, weights_only=True)['state_dict']
    assert all(torch.equal(v, state[k]) for k, v in faster.state_dict().items())
    assert not faster.training
    assert faster.dataset_meta['classes'] == CKPT_CLASSES
    assert len(faster.dataset_meta['palette']) == len(CKPT_CLASSES)
    assert faster.cfg.test_dataloader.dataset.pipeline[1].scale == (128, 128)  # cfg_options


def test_class_names_fall_back_to_the_config(faster_ckpt, tmp_path, val_paths):
    no_meta = tmp_path / 'no_meta.pth'
    torch.save(dict(state_dict=torch.load(faster_ckpt, weights_only=True)['state_dict']), no_meta)
    assert init_detector(DEMO_CONFIG, no_meta).dataset_meta['classes'] == SHAPE_CLASSES
    # no checkpoint, a Config object: not changed by cfg_options
    cfg = Config.fromfile(DEMO_CONFIG)
    model = init_detector(cfg, cfg_options={'model.test_cfg.rcnn.max_per_img': 7})
    assert model.dataset_meta['classes'] == SHAPE_CLASSES
    assert model.cfg.model.test_cfg.rcnn.max_per_img == 7
    assert cfg.model.test_cfg.rcnn.max_per_img == 100
    assert 0 < len(inference_detector(model, val_paths[0]).pred_instances) <= 7


def test_checkpoint_loading_stays_safe_and_strict(faster_ckpt, tmp_path):
    checkpoint = torch.load(faster_ckpt, weights_only=True)
    # weights_only=True: a checkpoint that would run code when unpickled is refused.
    evil = tmp_path / 'evil.pth'
    torch.save(dict(checkpoint, meta=dict(hook=pickle.loads)), evil)
    with pytest.raises(pickle.UnpicklingError, match=f'refused to load checkpoint {evil}: it '
                                                     'holds pickle.loads'):
        init_detector(DEMO_CONFIG, evil)
    # A checkpoint of another model fails, naming the file and what differs, instead of
    # predicting noise.
    partial = tmp_path / 'partial.pth'
    del checkpoint['state_dict']['roi_head.bbox_head.fc_cls.weight']
    torch.save(checkpoint, partial)
    with pytest.raises(CheckpointMismatchError,
                       match=f'checkpoint {partial} does not fit the model \\(FasterRCNN\\); the '
                             'model is unchanged:\n  1 missing key .*\n    '
                             'roi_head.bbox_head.fc_cls.weight$'):
        init_detector(DEMO_CONFIG, partial)
    with pytest.raises(CheckpointMismatchError,
                       match=r'roi_head\.bbox_head\.fc_cls\.weight: checkpoint \(5, 256\) vs '
                             r'model \(4, 256\)'):
        init_detector(DEMO_CONFIG, faster_ckpt,
                      cfg_options={'model.roi_head.bbox_head.num_classes': 3})
    with pytest.raises(FileNotFoundError, match='checkpoint not found: nope.pth'):
        init_detector(DEMO_CONFIG, 'nope.pth')


def test_path_array_and_list_give_the_same_predictions(faster, val_paths):
    path = val_paths[0]
    img = mmcv.imread(path)                                     # (H, W, 3) BGR uint8
    from_path = inference_detector(faster, path)
    assert from_path.img_path == path
    assert_in_image(from_path, img.shape[:2])
    from_array = inference_detector(faster, img)
    assert from_array.img_path is None
    assert_same_predictions(from_path, from_array)
    # a list (paths and arrays mixed) gives a list in input order; one image per batch is
    # exactly the single-image result
    listed = inference_detector(faster, [path, val_paths[1], img], batch_size=1)
    assert isinstance(listed, list) and len(listed) == 3
    assert [s.img_id for s in listed] == [0, 1, 2]
    assert_same_predictions(listed[0], from_path)
    assert_same_predictions(listed[2], from_path)
    assert_same_predictions(listed[1], inference_detector(faster, val_paths[1]))
    # batched (the config's batch size): the same batch of paths or of arrays, the same result
    by_path = inference_detector(faster, val_paths)
    by_array = inference_detector(faster, tuple(mmcv.imread(p) for p in val_paths))
    assert len(by_path) == len(val_paths)
    for a, b, p in zip(by_path, by_array, val_paths):
        assert_same_predictions(a, b)
        assert_in_image(a, mmcv.imread(p).shape[:2])
    assert inference_detector(faster, []) == []


def test_boxes_are_in_the_original_image_frame(faster, val_paths):
    # The test Resize (keep_ratio, 128 x 128) leaves a 96 x 128 image as it is and halves a
    # 192 x 256 copy (each pixel doubled): the network sees the same input, and the boxes
    # must come back twice as large.
    img = mmcv.imresize(mmcv.imread(val_paths[0]), (128, 96))
    big = img.repeat(2, axis=0).repeat(2, axis=1)
    small, large = inference_detector(faster, [img, big], batch_size=1)
    assert small.scale_factor == (1.0, 1.0) and large.scale_factor == (0.5, 0.5)
    assert small.img_shape == large.img_shape == (96, 128)
    assert_in_image(small, (96, 128))
    assert_in_image(large, (192, 256))
    torch.testing.assert_close(large.pred_instances.scores, small.pred_instances.scores)
    torch.testing.assert_close(large.pred_instances.bboxes, 2 * small.pred_instances.bboxes)


def test_same_predictions_as_the_test_dataset_route(faster, tiny_shapes_root):
    """What tools/test.py feeds the model (the dataset with the config's test pipeline, ground
    truth loaded) and inference_detector on the image file give the same predictions."""
    dataset_cfg = faster.cfg.test_dataloader.dataset.copy()
    dataset_cfg.update(data_root=f'{tiny_shapes_root}/', shapes_cfg=TINY_SHAPES)
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        dataset = DATASETS.build(dataset_cfg)
    item = dataset[1]
    assert len(item['data_samples'].gt_instances) > 0  # the test route loaded annotations
    with torch.no_grad():
        expected = faster.test_step(dict(inputs=[item['inputs']],
                                         data_samples=[item['data_samples']]))[0]
    got = inference_detector(faster, expected.img_path)
    assert_same_predictions(got, expected)


def test_mask_rcnn_predicts_masks_of_the_original_image(mask_rcnn, val_paths):
    img = mmcv.imread(val_paths[2])
    from_path, from_array = inference_detector(mask_rcnn, [val_paths[2], img])
    assert_in_image(from_path, img.shape[:2])
    assert 'masks' in from_path.pred_instances
    assert_same_predictions(from_path, from_array)
    assert mask_rcnn.dataset_meta['classes'] == CKPT_CLASSES


@pytest.mark.parametrize('config', [ATSS_DEMO_CONFIG, DETR_DEMO_CONFIG], ids=['atss', 'detr'])
def test_one_stage_and_detr_detectors(tmp_path, config, val_paths):
    ckpt = save_checkpoint(tmp_path / 'model.pth', config,
                           dict(dataset_meta=dict(classes=CKPT_CLASSES)))
    model = init_detector(config, ckpt, cfg_options=SMALL_INPUT)
    img = mmcv.imread(val_paths[3])
    from_path, from_array = inference_detector(model, [val_paths[3], img], batch_size=1)
    assert_in_image(from_path, img.shape[:2])
    assert_same_predictions(from_path, from_array)
    assert model.dataset_meta['classes'] == CKPT_CLASSES


def test_inference_pipeline_drops_annotations_and_picks_the_loader(faster):
    names = [type(t).__name__ for t in inference_pipeline(faster.cfg).transforms]
    assert names == ['LoadImageFromFile', 'Resize', 'PackDetInputs']
    names = [type(t).__name__ for t in inference_pipeline(faster.cfg, from_array=True).transforms]
    assert names == ['LoadImageFromNDArray', 'Resize', 'PackDetInputs']


def test_bad_images_are_named(faster, tmp_path):
    with pytest.raises(ValueError, match=r'expected an \(H, W, 3\) BGR image array, got an '
                                         r'array of shape \(20, 30\)'):
        inference_detector(faster, np.zeros((20, 30), np.uint8))
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'not an image')
    with pytest.raises(OSError, match='broken.png'):
        inference_detector(faster, [str(broken)])
    with pytest.raises(FileNotFoundError, match='missing.jpg'):
        inference_detector(faster, str(tmp_path / 'missing.jpg'))
    with pytest.raises(TypeError, match='image 0 is a int'):
        inference_detector(faster, [3])
