"""BatchFixedSizePad alone and as a batch augment of DetDataPreprocessor (mmdetection's LSJ
configs: ``batch_augments=[dict(type='BatchFixedSizePad', size=image_size, pad_mask=True)]``)."""
from __future__ import annotations

import pytest
import torch
from mmengine.structures import InstanceData, PixelData

from rcnn_det.models.data_preprocessors import BatchFixedSizePad, DetDataPreprocessor
from rcnn_det.registry import MODELS
from rcnn_det.structures import DetDataSample

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def samples_with_masks(shapes, with_masks=True) -> list[DetDataSample]:
    """One sample per (h, w): a 2-instance gt whose masks fill the image's top-left quarter."""
    samples = []
    for h, w in shapes:
        sample = DetDataSample(metainfo=dict(img_shape=(h, w)))
        gt = InstanceData(bboxes=torch.tensor([[0., 0., w / 2, h / 2], [1., 1., 3., 3.]]),
                          labels=torch.tensor([0, 1]))
        if with_masks:
            masks = torch.zeros(2, h, w, dtype=torch.uint8)
            masks[:, :h // 2, :w // 2] = 1
            gt.masks = masks
        sample.gt_instances = gt
        samples.append(sample)
    return samples


def test_pads_images_masks_and_metainfo_to_the_size():
    inputs = torch.rand(2, 3, 20, 30)
    samples = samples_with_masks([(20, 30), (20, 30)])
    for s in samples:
        s.set_metainfo(dict(batch_input_shape=(20, 30), pad_shape=(20, 30)))
    pad = BatchFixedSizePad(size=(32, 40), img_pad_value=-1.5, pad_mask=True, mask_pad_value=0)
    out, out_samples = pad(inputs, samples)
    assert out.shape == (2, 3, 32, 40)
    torch.testing.assert_close(out[..., :20, :30], inputs)
    assert (out[..., 20:, :] == -1.5).all() and (out[..., :, 30:] == -1.5).all()
    for s in out_samples:
        assert s.batch_input_shape == (32, 40) and s.pad_shape == (32, 40)
        assert s.img_shape == (20, 30)                     # the image itself is unchanged
        masks = s.gt_instances.masks
        assert masks.shape == (2, 32, 40) and masks.dtype == torch.uint8
        assert masks[:, :10, :15].all() and masks.sum() == 2 * 10 * 15
        assert s.gt_instances.bboxes.tolist() == [[0., 0., 15., 10.], [1., 1., 3., 3.]]


def test_masks_stay_unless_pad_mask():
    samples = samples_with_masks([(20, 30)])
    _, out = BatchFixedSizePad(size=(32, 40))(torch.zeros(1, 3, 20, 30), samples)
    assert out[0].gt_instances.masks.shape == (2, 20, 30)
    assert out[0].batch_input_shape == (32, 40)


def test_a_batch_at_least_the_size_is_untouched():
    inputs = torch.rand(1, 3, 40, 50)
    samples = samples_with_masks([(40, 50)])
    samples[0].set_metainfo(dict(batch_input_shape=(40, 50), pad_shape=(40, 48)))
    out, out_samples = BatchFixedSizePad(size=(32, 40), pad_mask=True)(inputs, samples)
    assert out is inputs and out_samples[0].pad_shape == (40, 48)
    assert out_samples[0].gt_instances.masks.shape == (2, 40, 50)


def test_one_side_larger_pads_the_other_and_records_the_real_shape():
    inputs = torch.rand(1, 3, 50, 20)
    out, samples = BatchFixedSizePad(size=(32, 40), pad_mask=True)(
        inputs, samples_with_masks([(50, 20)]))
    assert out.shape == (1, 3, 50, 40)
    assert samples[0].batch_input_shape == (50, 40) == samples[0].pad_shape
    assert samples[0].gt_instances.masks.shape == (2, 50, 40)


def test_masks_of_differing_sizes_empty_masks_and_no_masks():
    # pad_mask off in the preprocessor: masks keep each image's own size
    samples = samples_with_masks([(20, 30), (12, 16)])
    samples[1].gt_instances = InstanceData(bboxes=torch.zeros(0, 4),
                                           labels=torch.zeros(0, dtype=torch.long),
                                           masks=torch.zeros(0, 12, 16, dtype=torch.uint8))
    _, out = BatchFixedSizePad(size=(24, 32), pad_mask=True)(torch.zeros(2, 3, 20, 30), samples)
    assert out[0].gt_instances.masks.shape == (2, 24, 32)
    assert out[1].gt_instances.masks.shape == (0, 24, 32)
    no_masks = samples_with_masks([(20, 30)], with_masks=False)
    _, out = BatchFixedSizePad(size=(24, 32), pad_mask=True)(torch.zeros(1, 3, 20, 30), no_masks)
    assert 'masks' not in out[0].gt_instances
    out_inputs, none = BatchFixedSizePad(size=(24, 32))(torch.zeros(1, 3, 20, 30))
    assert out_inputs.shape == (1, 3, 24, 32) and none is None


def test_pad_seg_pads_the_semantic_map_with_its_value():
    sample = DetDataSample()
    sample.gt_sem_seg = PixelData(sem_seg=torch.zeros(1, 20, 30, dtype=torch.uint8))
    _, out = BatchFixedSizePad(size=(24, 32), pad_seg=True)(torch.zeros(1, 3, 20, 30), [sample])
    seg = out[0].gt_sem_seg.sem_seg
    assert seg.shape == (1, 24, 32) and (seg[:, 20:] == 255).all() and (seg[:, :20, :30] == 0).all()


@pytest.mark.parametrize('size', [1024, (1024,), (0, 1024), (1024.0, 1024)])
def test_bad_size(size):
    with pytest.raises(ValueError, match='size'):
        BatchFixedSizePad(size=size)


def raw_batch():
    g = torch.Generator().manual_seed(0)
    imgs = [torch.randint(0, 256, (3, 30, 40), generator=g, dtype=torch.uint8),
            torch.randint(0, 256, (3, 50, 20), generator=g, dtype=torch.uint8)]
    return dict(inputs=imgs, data_samples=samples_with_masks([(30, 40), (50, 20)]))


def lsj_preprocessor(size=(64, 64)) -> DetDataPreprocessor:
    """Co-DINO LSJ's data_preprocessor, with a small image_size."""
    return MODELS.build(dict(type='DetDataPreprocessor', mean=MEAN, std=STD, bgr_to_rgb=True,
                             pad_mask=True,
                             batch_augments=[dict(type='BatchFixedSizePad', size=size,
                                                  pad_mask=True)]))


def test_preprocessor_builds_and_applies_batch_augments_in_training():
    pre = lsj_preprocessor()
    assert isinstance(pre.batch_augments, torch.nn.ModuleList)
    assert type(pre.batch_augments[0]) is BatchFixedSizePad
    data = raw_batch()
    out = pre(data, training=True)
    inputs, samples = out['inputs'], out['data_samples']
    assert inputs.shape == (2, 3, 64, 64)
    # images normalised (BGR -> RGB) in the top-left, zeros (normalised space) elsewhere
    for i, img in enumerate(data['inputs']):
        h, w = img.shape[1:]
        expected = ((img[[2, 1, 0]].float() - torch.tensor(MEAN)[:, None, None])
                    / torch.tensor(STD)[:, None, None])
        torch.testing.assert_close(inputs[i, :, :h, :w], expected)
        assert (inputs[i, :, h:] == 0).all() and (inputs[i, :, :, w:] == 0).all()
        assert samples[i].batch_input_shape == (64, 64) == samples[i].pad_shape
        masks = samples[i].gt_instances.masks
        assert masks.shape == (2, 64, 64)
        assert masks[:, :h // 2, :w // 2].all() and masks.sum() == 2 * (h // 2) * (w // 2)


def test_preprocessor_skips_batch_augments_outside_training():
    out = lsj_preprocessor()(raw_batch(), training=False)
    assert out['inputs'].shape == (2, 3, 50, 40)
    assert out['data_samples'][0].batch_input_shape == (50, 40)
    assert out['data_samples'][0].pad_shape == (30, 40)
    assert out['data_samples'][0].gt_instances.masks.shape == (2, 30, 40)


def test_preprocessor_batch_augments_none_empty_built_and_unknown():
    assert DetDataPreprocessor().batch_augments is None
    assert len(DetDataPreprocessor(batch_augments=[]).batch_augments) == 0
    built = BatchFixedSizePad(size=(8, 8))
    assert DetDataPreprocessor(batch_augments=[built]).batch_augments[0] is built
    with pytest.raises(KeyError, match='BatchFixedSizePad'):
        DetDataPreprocessor(batch_augments=[dict(type='BatchFixedSizePadd', size=(8, 8))])
