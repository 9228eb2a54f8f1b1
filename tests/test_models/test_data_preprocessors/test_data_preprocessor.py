"""DetDataPreprocessor: BGR->RGB, normalisation, padding to the divisor, and the shape metainfo."""
from __future__ import annotations

import torch
from mmengine.structures import InstanceData

from rcnn_det.models.data_preprocessors import DetDataPreprocessor
from rcnn_det.registry import MODELS
from rcnn_det.structures import DetDataSample

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def batch(with_masks: bool = False):
    g = torch.Generator().manual_seed(0)
    imgs = [torch.randint(0, 256, (3, 30, 40), generator=g, dtype=torch.uint8),
            torch.randint(0, 256, (3, 50, 20), generator=g, dtype=torch.uint8)]
    samples = []
    for img in imgs:
        s = DetDataSample(metainfo=dict(img_shape=tuple(img.shape[1:])))
        gt = InstanceData(bboxes=torch.tensor([[1., 2., 5., 6.]]), labels=torch.tensor([0]))
        if with_masks:
            gt.masks = torch.ones(1, *img.shape[1:], dtype=torch.uint8)
        s.gt_instances = gt
        samples.append(s)
    return dict(inputs=imgs, data_samples=samples)


def test_normalise_bgr_to_rgb_and_pad():
    pre = MODELS.build(dict(type='DetDataPreprocessor', mean=MEAN, std=STD, bgr_to_rgb=True,
                            pad_size_divisor=32))
    data = batch()
    out = pre(data, training=True)
    inputs, samples = out['inputs'], out['data_samples']
    assert inputs.shape == (2, 3, 64, 64) and inputs.dtype == torch.float32
    for i, img in enumerate(data['inputs']):
        h, w = img.shape[1:]
        rgb = img[[2, 1, 0]].float()
        expected = (rgb - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
        torch.testing.assert_close(inputs[i, :, :h, :w], expected)
        assert (inputs[i, :, h:, :] == 0).all() and (inputs[i, :, :, w:] == 0).all()
    # hand check of one pixel: BGR (b, g, r) -> channel 0 is (r - 123.675) / 58.395
    b, g, r = data['inputs'][0][:, 0, 0].float().tolist()
    assert abs(inputs[0, 0, 0, 0].item() - (r - 123.675) / 58.395) < 1e-5
    assert abs(inputs[0, 1, 0, 0].item() - (g - 116.28) / 57.12) < 1e-5
    assert abs(inputs[0, 2, 0, 0].item() - (b - 103.53) / 57.375) < 1e-5
    assert [s.batch_input_shape for s in samples] == [(64, 64), (64, 64)]
    assert [s.pad_shape for s in samples] == [(32, 64), (64, 32)]
    assert [s.img_shape for s in samples] == [(30, 40), (50, 20)]
    # boxes untouched: padding is bottom / right
    assert samples[0].gt_instances.bboxes.tolist() == [[1., 2., 5., 6.]]


def test_no_divisor_and_no_colour_swap():
    pre = DetDataPreprocessor(mean=[0., 0., 0.], std=[1., 1., 1.], pad_size_divisor=1,
                              pad_value=7)
    data = batch()
    out = pre(data)
    assert out['inputs'].shape == (2, 3, 50, 40)
    torch.testing.assert_close(out['inputs'][0, :, :30, :40], data['inputs'][0].float())
    assert (out['inputs'][0, :, 30:, :] == 7).all()
    assert [s.pad_shape for s in out['data_samples']] == [(30, 40), (50, 20)]
    assert out['data_samples'][0].batch_input_shape == (50, 40)


def test_pad_gt_masks_in_training_only():
    pre = DetDataPreprocessor(mean=MEAN, std=STD, pad_size_divisor=32, pad_mask=True,
                              mask_pad_value=0)
    out = pre(batch(with_masks=True), training=True)
    masks = out['data_samples'][1].gt_instances.masks
    assert masks.shape == (1, 64, 64)
    assert masks[0, :50, :20].all() and masks[0, 50:].sum() == 0 and masks[0, :, 20:].sum() == 0
    out = pre(batch(with_masks=True), training=False)
    assert out['data_samples'][1].gt_instances.masks.shape == (1, 50, 20)
