"""FCNMaskHead (layers, targets, loss on the gt class channel only) and StandardRoIHead's mask
branch (config errors, shared extractor, loss against a hand-written assignment, pasted masks
against a per-pixel reference)."""
from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData
from torchvision.ops import box_iou

from rcnn_det.models.post_processing import to_original_image
from rcnn_det.models.roi_heads import StandardRoIHead
from rcnn_det.models.roi_heads.mask_heads import FCNMaskHead, MaskTargetRecipe
from rcnn_det.models.task_modules import SamplingResult
from rcnn_det.registry import MODELS
from rcnn_det.structures import DetDataSample, bbox2roi
from test_structures.test_mask import (assert_binary_matches, crop_reference, paste_reference,
                                       random_masks)

NUM_CLASSES = 3
MASK_HW = (20, 24)
SIZE = 7   # mask targets of the hand-built SamplingResults


def make_head(**kwargs) -> FCNMaskHead:
    torch.manual_seed(0)
    kwargs = dict(dict(num_convs=2, in_channels=4, conv_out_channels=4,
                       num_classes=NUM_CLASSES), **kwargs)
    return FCNMaskHead(**kwargs)


def bce_with_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross entropy, written out: max(x, 0) - x t + log(1 + exp(-|x|))."""
    return (logits.clamp(min=0) - logits * target + torch.log1p(torch.exp(-logits.abs()))).mean()


# ---- layers -------------------------------------------------------------------------------

def test_forward_shape_mmdet_defaults():
    head = FCNMaskHead()
    assert head(torch.randn(2, 256, 14, 14)).shape == (2, 80, 28, 28)
    agnostic = FCNMaskHead(class_agnostic=True, num_convs=1)
    assert agnostic(torch.randn(3, 256, 14, 14)).shape == (3, 1, 28, 28)
    assert FCNMaskHead(num_classes=5, num_convs=0)(torch.randn(0, 256, 14, 14)).shape == \
        (0, 5, 28, 28)


@pytest.mark.parametrize('upsample_cfg, size', [
    (dict(type='deconv', scale_factor=2), 28), (dict(type='nearest', scale_factor=2), 28),
    (dict(type='bilinear', scale_factor=2), 28), (None, 14),
    (dict(type='nearest', scale_factor=4), 56)])
def test_upsample_types(upsample_cfg, size):
    head = make_head(upsample_cfg=upsample_cfg)
    x = torch.randn(3, 4, 14, 14)
    out = head(x)
    assert out.shape == (3, NUM_CLASSES, size, size)
    feats = x
    for conv in head.convs:
        feats = F.relu(F.conv2d(feats, conv.conv.weight, conv.conv.bias, padding=1))
    if upsample_cfg is None:
        assert head.upsample is None
    elif upsample_cfg['type'] == 'deconv':   # a learned 2x2 stride-2 deconv, then ReLU
        assert isinstance(head.upsample, nn.ConvTranspose2d)
        feats = F.relu(F.conv_transpose2d(feats, head.upsample.weight, head.upsample.bias,
                                          stride=2))
    else:                                    # fixed interpolation, no ReLU
        kwargs = dict(align_corners=False) if upsample_cfg['type'] == 'bilinear' else {}
        feats = F.interpolate(feats, scale_factor=upsample_cfg['scale_factor'],
                              mode=upsample_cfg['type'], **kwargs)
    expected = F.conv2d(feats, head.conv_logits.weight, head.conv_logits.bias)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_unknown_upsample_type_or_key_raises():
    with pytest.raises(ValueError, match='carafe'):
        make_head(upsample_cfg=dict(type='carafe', scale_factor=2))
    with pytest.raises(KeyError, match='up_kernel'):
        make_head(upsample_cfg=dict(type='deconv', scale_factor=2, up_kernel=5))


def test_state_dict_keys_match_mmdetection():
    state = FCNMaskHead().state_dict()
    expected = {f'convs.{i}.conv.weight': (256, 256, 3, 3) for i in range(4)}
    expected.update({f'convs.{i}.conv.bias': (256,) for i in range(4)})
    expected.update({'upsample.weight': (256, 256, 2, 2), 'upsample.bias': (256,),
                     'conv_logits.weight': (80, 256, 1, 1), 'conv_logits.bias': (80,)})
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    agnostic = FCNMaskHead(class_agnostic=True).state_dict()
    assert agnostic['conv_logits.weight'].shape == (1, 256, 1, 1)


def test_init_weights_zero_biases_kaiming_fan_out():
    head = FCNMaskHead()
    for layer in (head.upsample, head.conv_logits):
        nn.init.constant_(layer.bias, 1.)
        nn.init.constant_(layer.weight, 1.)
    head.init_weights()
    assert (head.conv_logits.bias == 0).all() and (head.upsample.bias == 0).all()
    # kaiming_normal_(fan_out, relu): std = sqrt(2 / fan_out), fan_out = 80 * 1 * 1 here
    std = head.conv_logits.weight.std().item()
    assert abs(std - math.sqrt(2 / 80)) < 0.1 * math.sqrt(2 / 80)
    # ConvTranspose2d's fan_out is computed from weight dim 0 (in_channels) * 2 * 2
    std = head.upsample.weight.std().item()
    assert abs(std - math.sqrt(2 / (256 * 4))) < 0.05 * math.sqrt(2 / (256 * 4))


# ---- targets and loss ---------------------------------------------------------------------

def sampling_result(pos_priors, gt_inds, labels) -> SamplingResult:
    num_pos = len(gt_inds)
    pos_priors = torch.tensor(pos_priors, dtype=torch.float32).reshape(-1, 4)
    return SamplingResult(
        pos_inds=torch.arange(num_pos), neg_inds=torch.arange(num_pos, num_pos + 1),
        pos_priors=pos_priors, neg_priors=torch.tensor([[0., 0., 2., 2.]]),
        pos_gt_bboxes=pos_priors.clone(),
        pos_gt_labels=torch.tensor(labels, dtype=torch.long),
        pos_assigned_gt_inds=torch.tensor(gt_inds, dtype=torch.long),
        pos_is_gt=torch.zeros(num_pos, dtype=torch.bool), num_gts=max(gt_inds, default=-1) + 1,
        avg_factor=max(num_pos, 1) + 1)


def two_images():
    """2 images: 3 masks and 4 positives (one gt twice, one box over the border), 1 and 2."""
    masks = random_masks(4, MASK_HW, seed=10)
    gts = [InstanceData(masks=masks[:3]), InstanceData(masks=masks[3:])]
    results = [
        sampling_result([[2.3, 1.7, 15.2, 12.9], [10.1, 4.4, 22.8, 19.5],
                         [-3.5, 8.2, 9.9, 24.6], [0.5, 0.5, 23.5, 19.5]],
                        [2, 0, 2, 1], [1, 0, 1, 2]),
        sampling_result([[4.6, 3.3, 18.1, 16.7], [1.2, 9.8, 12.4, 18.3]], [0, 0], [2, 2])]
    return results, gts


def reference_targets(results, gts, binary: bool) -> torch.Tensor:
    crops = torch.cat([crop_reference(gt.masks, res.pos_priors, res.pos_assigned_gt_inds, SIZE,
                                      aligned=True) for res, gt in zip(results, gts)])
    return (crops >= 0.5).float() if binary else crops


def test_get_targets_binary_and_soft():
    head = make_head()
    results, gts = two_images()
    binary = head.get_targets(results, gts, MaskTargetRecipe(mask_size=SIZE))
    soft = head.get_targets(results, gts, MaskTargetRecipe(mask_size=SIZE, soft_mask_target=True))
    assert binary.shape == soft.shape == (6, SIZE, SIZE)
    expected_soft = reference_targets(results, gts, binary=False)
    torch.testing.assert_close(soft, expected_soft, rtol=0, atol=1e-5)
    # binarised at >= 0.5 (pixels within float error of 0.5 may go either way)
    settled = (expected_soft - 0.5).abs() > 1e-5
    assert torch.equal(binary[settled], (expected_soft >= 0.5).float()[settled])
    assert set(binary.unique().tolist()) == {0., 1.}
    assert ((soft > 0) & (soft < 1)).any()                  # soft targets really are soft


def test_get_targets_without_half_pixel_alignment():
    """torchvision's mask targets: RoIAlign with aligned=False (train_cfg mask_target_aligned)."""
    head = make_head()
    results, gts = two_images()
    recipe = MaskTargetRecipe(mask_size=SIZE, soft_mask_target=True, mask_target_aligned=False)
    got = head.get_targets(results, gts, recipe)
    expected = torch.cat([crop_reference(gt.masks, res.pos_priors, res.pos_assigned_gt_inds,
                                         SIZE, aligned=False) for res, gt in zip(results, gts)])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(got, reference_targets(results, gts, binary=False), atol=1e-3)


def test_get_targets_threshold_is_inclusive():
    """Columns 0..11 set; one 1 x 1 bin sampling pixel centres 4..19 covers 8/16 = 0.5 -> 1,
    shifted by one pixel 7/16 -> 0 (mmdet: ``targets >= 0.5``)."""
    mask = torch.zeros(1, *MASK_HW, dtype=torch.uint8)
    mask[0, :, :12] = 1
    res = sampling_result([[4., 4., 20., 12.], [5., 4., 21., 12.]], [0, 0], [0, 0])
    gt = [InstanceData(masks=mask)]
    soft = make_head().get_targets([res], gt, MaskTargetRecipe(1, soft_mask_target=True))
    assert soft.flatten().tolist() == [0.5, 0.4375]
    binary = make_head().get_targets([res], gt, MaskTargetRecipe(1))
    assert binary.flatten().tolist() == [1., 0.]


def test_loss_on_gt_class_channel_only():
    head = make_head(loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=2.0))
    results, gts = two_images()
    labels = torch.tensor([1, 0, 1, 2, 2, 2])
    mask_preds = torch.randn(6, NUM_CLASSES, SIZE, SIZE,
                             generator=torch.Generator().manual_seed(3)).requires_grad_()
    losses, targets = head.loss_and_target(mask_preds, results, gts,
                                           MaskTargetRecipe(mask_size=SIZE))
    assert set(losses) == {'loss_mask'}
    expected_targets = reference_targets(results, gts, binary=True)
    assert torch.equal(targets, expected_targets)
    expected = 2.0 * bce_with_logits(mask_preds[torch.arange(6), labels].detach(),
                                     expected_targets)
    torch.testing.assert_close(losses['loss_mask'].reshape(()), expected)
    losses['loss_mask'].sum().backward()
    grad = mask_preds.grad
    for p in range(6):
        for c in range(NUM_CLASSES):
            if c == labels[p]:
                assert grad[p, c].abs().sum() > 0
            else:
                assert (grad[p, c] == 0).all(), (p, c)
    # d loss / d logit = w (sigmoid(x) - t) / number of elements
    torch.testing.assert_close(grad[torch.arange(6), labels],
                               2.0 * (mask_preds[torch.arange(6), labels].detach().sigmoid()
                                      - expected_targets) / expected_targets.numel())


def test_loss_soft_targets_and_class_agnostic():
    results, gts = two_images()
    head = make_head(class_agnostic=True)
    mask_preds = torch.randn(6, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    recipe = MaskTargetRecipe(mask_size=SIZE, soft_mask_target=True)
    losses, targets = head.loss_and_target(mask_preds, results, gts, recipe)
    torch.testing.assert_close(targets, reference_targets(results, gts, binary=False),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(losses['loss_mask'].reshape(()),
                               bce_with_logits(mask_preds[:, 0], targets))


def test_loss_without_positives_is_zero_and_keeps_grad():
    head = make_head()
    results = [sampling_result([], [], []), sampling_result([], [], [])]
    gts = [InstanceData(masks=random_masks(2, MASK_HW)),
           InstanceData(masks=torch.zeros(0, *MASK_HW, dtype=torch.uint8))]
    mask_preds = torch.randn(0, NUM_CLASSES, SIZE, SIZE, requires_grad=True)
    losses, targets = head.loss_and_target(mask_preds, results, gts,
                                           MaskTargetRecipe(mask_size=SIZE))
    assert targets.shape == (0, SIZE, SIZE)
    assert losses['loss_mask'].item() == 0 and losses['loss_mask'].requires_grad
    losses['loss_mask'].backward()
    assert mask_preds.grad is not None


# ---- StandardRoIHead's mask branch --------------------------------------------------------

STRIDES = [4, 8]
CHANNELS = 4


def extractor(size: int) -> dict:
    return dict(type='SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=size, sampling_ratio=0),
                out_channels=CHANNELS, featmap_strides=STRIDES)


def roi_head_cfg(mask_size: int | None = 28, shared: bool = False, train: bool = True,
                 **test_cfg) -> dict:
    train_cfg = dict(
        assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                      match_low_quality=False, ignore_iof_thr=-1),
        sampler=dict(type='RandomSampler', num=512, pos_fraction=1.0, neg_pos_ub=-1,
                     add_gt_as_proposals=True),
        pos_weight=-1, debug=False)
    if mask_size is not None:
        train_cfg['mask_size'] = mask_size
    return dict(
        type='StandardRoIHead',
        bbox_roi_extractor=extractor(7),
        bbox_head=dict(type='Shared2FCBBoxHead', in_channels=CHANNELS, fc_out_channels=16,
                       roi_feat_size=7, num_classes=NUM_CLASSES),
        mask_roi_extractor=None if shared else extractor(14),
        mask_head=dict(type='FCNMaskHead', num_convs=1, in_channels=CHANNELS,
                       conv_out_channels=CHANNELS, num_classes=NUM_CLASSES),
        train_cfg=train_cfg if train else None,
        test_cfg=dict(dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5),
                           max_per_img=4, mask_thr_binary=0.5), **test_cfg))


def build_roi_head(**kwargs) -> StandardRoIHead:
    torch.manual_seed(0)
    head = MODELS.build(roi_head_cfg(**kwargs))
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    head.init_weights()
    return head


IMG_SHAPES = [(40, 48), (32, 48)]
ORI_SHAPES = [(80, 96), (64, 64)]              # scale_factor (w, h): (0.5, 0.5), (0.75, 0.5)


def batch(with_masks: bool = True, seed: int = 0):
    """Features of 2 images, 6 proposals each, 2 gts each with filled-rectangle masks."""
    g = torch.Generator().manual_seed(seed)
    pad = (40, 48)
    x = tuple(torch.randn(2, CHANNELS, pad[0] // s, pad[1] // s, generator=g) for s in STRIDES)
    samples, proposals = [], []
    gt_boxes = [torch.tensor([[4., 6., 30., 34.], [20., 2., 44., 20.]]),
                torch.tensor([[2., 2., 22., 28.], [25., 8., 46., 30.]])]
    for (h, w), ori, boxes in zip(IMG_SHAPES, ORI_SHAPES, gt_boxes):
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=ori,
                                             scale_factor=(w / ori[1], h / ori[0])))
        gt = InstanceData(bboxes=boxes, labels=torch.tensor([2, 0]))
        if with_masks:
            masks = torch.zeros(2, *pad, dtype=torch.uint8)
            for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
                masks[k, y1:y2, x1 + (x2 - x1) // 3:x2] = 1     # the box's right two thirds
            gt.masks = masks
        sample.gt_instances = gt
        samples.append(sample)
        jitter = torch.randn(6, 4, generator=g) * 2
        far = boxes + torch.tensor([9., 7., 9., 7.])     # IoU < 0.5: negatives
        proposals.append(InstanceData(bboxes=torch.cat([boxes, boxes, far]) + jitter))
    return x, proposals, samples


def test_mask_size_is_required_for_training():
    with pytest.raises(KeyError, match='mask_size'):
        build_roi_head(mask_size=None)
    head = build_roi_head(train=False)       # an inference-only head needs none
    assert head.with_mask and head.train_recipe is None
    assert build_roi_head(mask_size=14).train_recipe.mask == MaskTargetRecipe(mask_size=14)
    cfg = roi_head_cfg()
    cfg['train_cfg'].update(soft_mask_target=True, mask_target_aligned=False)
    assert MODELS.build(cfg).train_recipe.mask == MaskTargetRecipe(28, True, False)


def test_loss_without_gt_masks_names_load_annotations():
    head = build_roi_head()
    x, proposals, samples = batch(with_masks=False)
    with pytest.raises(KeyError, match=r'LoadAnnotations\(with_mask=True\)'):
        head.loss(x, proposals, samples)


@pytest.mark.parametrize('shared', [False, True])
def test_mask_forward_reads_the_right_extractor(shared):
    head = build_roi_head(shared=shared, mask_size=14 if shared else 28)
    assert head.share_roi_extractor == shared
    assert (head.mask_roi_extractor is head.bbox_roi_extractor) == shared
    x, proposals, _ = batch()
    rois = bbox2roi([p.bboxes for p in proposals])
    feats = (head.bbox_roi_extractor if shared else head.mask_roi_extractor)(x, rois)
    assert feats.shape[-1] == (7 if shared else 14)
    out = head.mask_forward(x, rois)
    assert out.shape == (12, NUM_CLASSES, 14 if shared else 28, 14 if shared else 28)
    torch.testing.assert_close(out, head.mask_head(feats))
    if shared:   # one extractor in the state dict, under the box branch's name
        assert not any(k.startswith('mask_roi_extractor') for k in head.state_dict())


@pytest.mark.parametrize('shared', [False, True])
def test_loss_mask_against_hand_assignment(shared):
    """All proposals and gts are sampled; the positives are those with IoU >= 0.5."""
    size = 14 if shared else 28
    head = build_roi_head(shared=shared, mask_size=size)
    x, proposals, samples = batch()
    losses = head.loss(x, proposals, samples)
    assert set(losses) == {'loss_cls', 'acc', 'loss_bbox', 'loss_mask'}
    rois, targets, labels = [], [], []
    for b, (props, sample) in enumerate(zip(proposals, samples)):
        gt = sample.gt_instances
        priors = torch.cat([gt.bboxes, props.bboxes])
        iou, gt_inds = box_iou(priors, gt.bboxes).max(1)
        pos = iou >= 0.5
        assert 2 < pos.sum() < len(priors)              # the far proposals are negatives
        rois.append(torch.cat([torch.full((int(pos.sum()), 1), float(b)), priors[pos]], 1))
        targets.append(crop_reference(gt.masks, priors[pos], gt_inds[pos], size, aligned=True))
        labels.append(gt.labels[gt_inds[pos]])
    rois, labels = torch.cat(rois), torch.cat(labels)
    targets = (torch.cat(targets) >= 0.5).float()
    logits = head.mask_forward(x, rois)[torch.arange(len(rois)), labels]
    torch.testing.assert_close(losses['loss_mask'].reshape(()),
                               bce_with_logits(logits, targets), rtol=1e-4, atol=1e-5)
    head.zero_grad()
    sum(v.sum() for k, v in losses.items() if k.startswith('loss')).backward()
    assert head.mask_head.conv_logits.weight.grad.abs().sum() > 0
    assert head.mask_head.convs[0].conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('rescale', [True, False])
def test_predict_masks_in_the_requested_frame(rescale):
    head = build_roi_head(train=False).eval()
    x, proposals, samples = batch()
    with torch.no_grad():
        # the head predicts in the network input's frame; the detector's one conversion pastes
        results = to_original_image(head.predict(x, proposals, samples),
                                    [s.metainfo for s in samples], rescale, head.mask_paste)
        boxes_only = head.bbox_head.predict_by_feat(
            bbox2roi([p.bboxes for p in proposals]), *head.bbox_forward(
                x, bbox2roi([p.bboxes for p in proposals])),
            [s.metainfo for s in samples], head.test_recipe)
    assert len(results) == 2
    for b, (res, ref, sample) in enumerate(zip(results, boxes_only, samples)):
        meta = sample.metainfo
        frame = meta['ori_shape'] if rescale else meta['img_shape']
        assert 0 < len(res) <= 4
        assert res.masks.dtype == torch.bool and res.masks.shape == (len(res),) + tuple(frame)
        sx, sy = meta['scale_factor'] if rescale else (1., 1.)
        torch.testing.assert_close(res.bboxes, ref.bboxes / torch.tensor([sx, sy, sx, sy]))
        # mask logits come from the boxes in the network-input frame, pasted into ``frame``
        with torch.no_grad():
            rois = torch.cat([torch.full((len(ref), 1), float(b)), ref.bboxes], 1)
            probs = head.mask_forward(x, rois)[torch.arange(len(ref)), ref.labels].sigmoid()
        assert_binary_matches(res.masks, paste_reference(probs, res.bboxes, frame), 0.5)
        assert res.masks.any()
