"""PackDetInputs: tensor types, shapes, the ignored split and the metainfo."""
from __future__ import annotations

import numpy as np
import torch

from rcnn_det.datasets.transforms import PackDetInputs
from rcnn_det.structures import DetDataSample


def results(num=3, height=6, width=8):
    rng = np.random.default_rng(0)
    return dict(
        img=rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        img_id=7, img_path='a.png', ori_shape=(3, 4), img_shape=(height, width),
        scale_factor=(2.0, 2.0), flip=False, flip_direction=None, extra='not packed',
        gt_bboxes=np.arange(num * 4, dtype=np.float32).reshape(num, 4),
        gt_bboxes_labels=np.arange(num, dtype=np.int64),
        gt_ignore_flags=np.array([False, True, False][:num]),
        gt_masks=np.arange(num, dtype=np.uint8)[:, None, None].repeat(height, 1).repeat(width, 2))


def test_inputs_are_uint8_chw_contiguous():
    res = results()
    packed = PackDetInputs()(res)
    inputs = packed['inputs']
    assert inputs.dtype == torch.uint8 and inputs.shape == (3, 6, 8) and inputs.is_contiguous()
    np.testing.assert_array_equal(inputs.numpy(), res['img'].transpose(2, 0, 1))
    flipped = results()
    flipped['img'] = flipped['img'][:, ::-1]  # a negative-stride view, as mmcv.imflip gives
    inputs = PackDetInputs()(flipped)['inputs']
    assert inputs.is_contiguous()
    np.testing.assert_array_equal(inputs.numpy(), flipped['img'].transpose(2, 0, 1))


def test_instances_split_by_ignore_flag():
    sample = PackDetInputs()(results())['data_samples']
    assert isinstance(sample, DetDataSample)
    gt, ignored = sample.gt_instances, sample.ignored_instances
    assert gt.bboxes.dtype == torch.float32 and gt.bboxes.shape == (2, 4)
    assert gt.labels.dtype == torch.int64 and gt.labels.tolist() == [0, 2]
    assert gt.masks.dtype == torch.uint8 and gt.masks.shape == (2, 6, 8)
    assert gt.masks[:, 0, 0].tolist() == [0, 2]
    assert ignored.bboxes.tolist() == [[4, 5, 6, 7]] and ignored.labels.tolist() == [1]
    assert ignored.masks.shape == (1, 6, 8)


def test_metainfo_keys():
    sample = PackDetInputs()(results())['data_samples']
    assert sample.metainfo == dict(img_id=7, img_path='a.png', ori_shape=(3, 4),
                                   img_shape=(6, 8), scale_factor=(2.0, 2.0), flip=False,
                                   flip_direction=None)
    sample = PackDetInputs(meta_keys=('img_id', 'extra', 'absent'))(results())['data_samples']
    assert sample.metainfo == dict(img_id=7, extra='not packed')


def test_without_ignore_flags_and_without_instances():
    res = results()
    del res['gt_ignore_flags']
    gt = PackDetInputs()(res)['data_samples'].gt_instances
    assert len(gt) == 3
    empty = PackDetInputs()(results(num=0))['data_samples']
    assert empty.gt_instances.bboxes.shape == (0, 4)
    assert empty.gt_instances.masks.shape == (0, 6, 8)
    assert empty.ignored_instances.labels.shape == (0,)
