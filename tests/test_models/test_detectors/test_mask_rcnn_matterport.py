"""configs/mask_rcnn/mask_rcnn_r50_fpn_matterport_style.py: matterport's Mask R-CNN settings.

Each matterport rule is restated here as a small reference (its square resize, its anchors, its
RoI-to-level rounding, its negatives-per-positive count) and compared with what the config builds;
then one training iteration of the whole model on a small image.
"""
from __future__ import annotations

import copy
import json
import logging
import math

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

from conftest import REPO_ROOT
from rcnn_det.models.roi_heads.roi_extractors.single_level_roi_extractor import map_roi_levels
from rcnn_det.models.task_modules.samplers.random_sampler import sample_pos_neg
from rcnn_det.registry import DATASETS, MODELS, TASK_UTILS, TRANSFORMS
from rcnn_det.structures import DetDataSample

MATTERPORT_CONFIG = REPO_ROOT / 'configs/mask_rcnn/mask_rcnn_r50_fpn_matterport_style.py'
IMAGE_MIN_DIM, IMAGE_MAX_DIM = 800, 1024
RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)
RPN_ANCHOR_RATIOS = (0.5, 1, 2)        # width / height
BACKBONE_STRIDES = (4, 8, 16, 32, 64)
TRAIN_ROIS_PER_IMAGE, ROI_POSITIVE_RATIO = 200, 0.33


@pytest.fixture(scope='module')
def cfg():
    return Config.fromfile(MATTERPORT_CONFIG)


def test_config_settings(cfg):
    model, train, test = cfg.model, cfg.model.train_cfg, cfg.model.test_cfg
    assert model.type == 'MaskRCNN' and model.backbone.depth == 50
    assert model.rpn_head.bbox_coder.target_stds == [0.1, 0.1, 0.2, 0.2]
    assert model.roi_head.bbox_head.bbox_coder.target_stds == [0.1, 0.1, 0.2, 0.2]
    assert train.rpn.sampler.num == 256 and train.rpn.sampler.pos_fraction == 0.5
    assert train.rpn_proposal.nms_pre == test.rpn.nms_pre == 6000
    assert train.rpn_proposal.max_per_img == 2000 and test.rpn.max_per_img == 1000
    assert train.rpn_proposal.nms.iou_threshold == test.rpn.nms.iou_threshold == 0.7
    assert (train.rcnn.sampler.num, train.rcnn.sampler.pos_fraction) == (200, 0.33)
    assert not train.rcnn.sampler.add_gt_as_proposals
    assert (test.rcnn.score_thr, test.rcnn.nms.iou_threshold, test.rcnn.max_per_img) == (
        0.7, 0.3, 100)
    assert train.rcnn.mask_size == 28 and test.rcnn.mask_thr_binary == 0.5
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.lr, optimizer.momentum, optimizer.weight_decay) == (0.001, 0.9, 0.0001)
    assert cfg.optim_wrapper.clip_grad.max_norm == 5.0
    assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 2


def matterport_anchors(scale: float, ratios, shape: tuple[int, int], stride: int) -> np.ndarray:
    """matterport's generate_anchors (one scale per level), as (N, 4) xyxy rows."""
    rows = []
    for y in range(shape[0]):
        for x in range(shape[1]):
            for ratio in ratios:
                h, w = scale / math.sqrt(ratio), scale * math.sqrt(ratio)
                cy, cx = y * stride, x * stride
                rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return np.array(rows)


def sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def test_anchors_are_32_to_512_with_three_ratios(cfg):
    generator = TASK_UTILS.build(cfg.model.rpn_head.anchor_generator)
    assert generator.num_base_priors == [3] * 5
    for level, (base, scale) in enumerate(zip(generator.base_anchors, RPN_ANCHOR_SCALES)):
        w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
        torch.testing.assert_close(w * h, torch.full((3,), float(scale) ** 2))
        assert sorted((w / h).tolist()) == pytest.approx(sorted(RPN_ANCHOR_RATIOS)), level
        assert base[:, :2].add(base[:, 2:]).abs().max() < 1e-4   # centred on the location
    # the full grids equal matterport's anchors (as sets, on a 3 x 4 map per level)
    grids = generator.grid_priors([(3, 4)] * 5)
    for grid, scale, stride in zip(grids, RPN_ANCHOR_SCALES, BACKBONE_STRIDES):
        ref = matterport_anchors(scale, RPN_ANCHOR_RATIOS, (3, 4), stride)
        np.testing.assert_allclose(sorted_rows(grid.numpy()), sorted_rows(ref), atol=1e-3)


def test_rois_go_to_matterports_pyramid_level(cfg):
    extractor = cfg.model.roi_head.bbox_roi_extractor
    assert cfg.model.roi_head.mask_roi_extractor.finest_scale == extractor.finest_scale
    g = torch.Generator().manual_seed(0)
    wh = torch.exp(torch.empty(2000, 2).uniform_(math.log(4), math.log(1024), generator=g))
    rois = torch.cat([torch.zeros(2000, 3), wh], 1)          # (0, 0, 0, w, h)
    levels = map_roi_levels(rois, 4, extractor.finest_scale)
    # matterport's PyramidROIAlign: level k = clamp(4 + round(log2(sqrt(wh) / 224)), 2, 5)
    expected = [min(5, max(2, 4 + round(math.log2(math.sqrt(w * h) / 224)))) - 2
                for w, h in wh.tolist()]
    assert levels.tolist() == expected


def test_rcnn_negatives_follow_matterports_ratio(cfg):
    sampler = cfg.model.train_cfg.rcnn.sampler
    positive_count = int(TRAIN_ROIS_PER_IMAGE * ROI_POSITIVE_RATIO)
    for available in range(1, 100):
        gt_inds = torch.cat([torch.ones(available, dtype=torch.long),
                             torch.zeros(1000, dtype=torch.long)])
        pos, neg = sample_pos_neg(gt_inds, sampler.num, sampler.pos_fraction, sampler.neg_pos_ub)
        # detection_targets_graph: P = min(available, 66), N = int(P / 0.33) - P
        num_pos = min(available, positive_count)
        assert len(pos) == num_pos
        assert len(neg) == int(1.0 / ROI_POSITIVE_RATIO * num_pos) - num_pos, available
    # the one count that differs: without positives matterport takes no negatives, mmdet's
    # sampler (max(1, positives)) takes 2 (docs/seed_systems.md)
    _, neg = sample_pos_neg(torch.zeros(1000, dtype=torch.long), sampler.num,
                            sampler.pos_fraction, sampler.neg_pos_ub)
    assert len(neg) == 2


def matterport_square_shape(h: int, w: int) -> tuple[int, int]:
    """utils.resize_image(mode='square'): the resized (h, w) before the zero padding."""
    scale = max(1, IMAGE_MIN_DIM / min(h, w))       # scale up, never down
    if round(max(h, w) * scale) > IMAGE_MAX_DIM:
        scale = IMAGE_MAX_DIM / max(h, w)
    return round(h * scale), round(w * scale)


def resized_extent(img: np.ndarray) -> tuple[int, int]:
    """(h, w) of the non-zero top-left block of a padded image without zero pixels of its own."""
    nonzero = img.any(-1)
    rows, cols = np.flatnonzero(nonzero.any(1)), np.flatnonzero(nonzero.any(0))
    return int(rows.max()) + 1, int(cols.max()) + 1


def run_transforms(pipeline: list[dict], results: dict) -> dict:
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        for step in pipeline:
            results = TRANSFORMS.build(step).transform(results)
    return results


@pytest.mark.parametrize('h, w', [(480, 640), (375, 500), (600, 1000), (300, 300), (500, 2000),
                                  (800, 640)])
def test_square_resize_matches_matterport_up_to_the_padding_position(cfg, h, w):
    resize_pad = [s for s in cfg.test_pipeline if s['type'] in ('Resize', 'Pad')]
    out = run_transforms(resize_pad, dict(img=np.full((h, w, 3), 7, np.uint8)))
    assert out['img'].shape == (IMAGE_MAX_DIM, IMAGE_MAX_DIM, 3)
    assert out['img_shape'] == (IMAGE_MAX_DIM, IMAGE_MAX_DIM)    # mmcv's Pad: the padded frame
    new_h, new_w = resized_extent(out['img'])
    assert (new_h, new_w) == matterport_square_shape(h, w)
    assert out['scale_factor'] == pytest.approx((new_w / w, new_h / h), rel=2e-3)
    assert (out['img'][:new_h, :new_w] == 7).all()      # the image at the top-left ...
    assert out['img'][new_h:].sum() == 0 and out['img'][:, new_w:].sum() == 0   # ... zeros


def test_shorter_side_above_800_is_scaled_down_unlike_matterport(cfg):
    resize_pad = [s for s in cfg.test_pipeline if s['type'] in ('Resize', 'Pad')]
    out = run_transforms(resize_pad, dict(img=np.ones((900, 1000, 3), np.uint8)))
    assert matterport_square_shape(900, 1000) == (900, 1000)        # matterport: as is
    assert resized_extent(out['img']) == (800, 889)                 # rcnn_det: shorter side 800


@pytest.fixture(scope='module')
def coco_640x480(tmp_path_factory):
    root = tmp_path_factory.mktemp('matterport_coco')
    (root / 'imgs').mkdir()
    pixels = np.random.default_rng(0).integers(1, 256, (480, 640, 3), dtype=np.uint8)
    cv2.imwrite(str(root / 'imgs' / 'a.png'), pixels)
    coco = dict(images=[dict(id=1, file_name='a.png', width=640, height=480)],
                categories=[dict(id=1, name='box')],
                annotations=[dict(id=1, image_id=1, category_id=1, bbox=[100, 50, 200, 150],
                                  area=30000, iscrowd=0,
                                  segmentation=[[100, 50, 300, 50, 300, 200, 100, 200]])])
    (root / 'ann.json').write_text(json.dumps(coco))
    return root


def build_dataset(cfg, root, split: str):
    dataset_cfg = copy.deepcopy(cfg[f'{split}_dataloader'].dataset)
    dataset_cfg.update(data_root=str(root), ann_file='ann.json', data_prefix=dict(img='imgs/'))
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        return DATASETS.build(dataset_cfg)


def test_train_pipeline_gives_1024_square_inputs(cfg, coco_640x480):
    packed = build_dataset(cfg, coco_640x480, 'train')[0]
    sample = packed['data_samples']
    assert packed['inputs'].shape == (3, 1024, 1024)
    assert sample.img_shape == (1024, 1024) and sample.ori_shape == (480, 640)
    assert sample.scale_factor == pytest.approx((1.6, 1.6))
    # the 1024 x 768 image (no zero pixel of its own), then zero padding below it
    assert resized_extent(packed['inputs'].permute(1, 2, 0).numpy()) == (768, 1024)
    assert packed['inputs'][:, 768:].sum() == 0
    box = torch.tensor([[160., 80., 480., 320.]])        # (100, 50, 300, 200) x 1.6
    if sample.flip:
        box = torch.tensor([[1024 - 480., 80., 1024 - 160., 320.]])
    torch.testing.assert_close(sample.gt_instances.bboxes, box)
    masks = sample.gt_instances.masks
    assert masks.shape == (1, 1024, 1024) and masks[:, 768:].sum() == 0
    assert abs(int(masks.sum()) - 320 * 240) < 2 * (320 + 240)


def test_test_pipeline_gives_1024_square_inputs(cfg, coco_640x480):
    packed = build_dataset(cfg, coco_640x480, 'test')[0]
    sample = packed['data_samples']
    assert packed['inputs'].shape == (3, 1024, 1024) and sample.img_shape == (1024, 1024)
    assert resized_extent(packed['inputs'].permute(1, 2, 0).numpy()) == (768, 1024)
    assert sample.scale_factor == pytest.approx((1.6, 1.6))
    # ground truth stays in the original frame for evaluation
    torch.testing.assert_close(sample.gt_instances.bboxes, torch.tensor([[100., 50., 300., 200.]]))


def test_one_training_iteration(cfg, monkeypatch):
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None                 # no ImageNet weights here
    model_cfg.roi_head.bbox_head.num_classes = 3
    model_cfg.roi_head.mask_head.num_classes = 3
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    assert model.rpn_head.rpn_conv.out_channels == 512
    assert model.rpn_head.rpn_cls.out_channels == 3 * 2        # softmax: (fg, bg) per anchor
    assert model.roi_head.bbox_head.fc_cls.out_features == 4
    assert model.roi_head.mask_head.conv_logits.out_channels == 3

    # a 160 x 160 image keeps R50 (and the 512-channel RPN conv on P2) quick on a CPU
    sample = DetDataSample(metainfo=dict(img_shape=(160, 160), ori_shape=(160, 160),
                                         scale_factor=(1., 1.)))
    boxes = torch.tensor([[20., 25., 80., 95.], [75., 40., 140., 125.]])
    masks = torch.zeros(2, 160, 160, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        masks[i, y1:y2, x1:x2] = 1
    sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.tensor([0, 2]), masks=masks)
    image = torch.randint(0, 256, (3, 160, 160), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))

    proposal_counts, samples = [], []
    roi_loss, sample_rois = model.roi_head.loss, model.roi_head.train_recipe.sampler.sample

    def record_proposals(x, rpn_results_list, data_samples):
        proposal_counts.extend(len(r) for r in rpn_results_list)
        return roi_loss(x, rpn_results_list, data_samples)

    def record_samples(*args, **kwargs):
        samples.append(sample_rois(*args, **kwargs))
        return samples[-1]
    monkeypatch.setattr(model.roi_head, 'loss', record_proposals)
    monkeypatch.setattr(model.roi_head.train_recipe.sampler, 'sample', record_samples)

    model.train()
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), True)
    losses = model(**data, mode='loss')
    assert set(losses) == {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'acc', 'loss_bbox',
                           'loss_mask'}
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)
    total.backward()
    for name in ('rpn_head.rpn_cls.weight', 'roi_head.bbox_head.fc_cls.weight',
                 'roi_head.mask_head.conv_logits.weight', 'neck.fpn_convs.0.conv.weight'):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert 0 < proposal_counts[0] <= 2000                           # POST_NMS_ROIS_TRAINING
    (result,) = samples
    num_pos, num_neg = len(result.pos_inds), len(result.neg_inds)
    assert 0 < num_pos <= 66 and num_neg == int(1.0 / ROI_POSITIVE_RATIO * num_pos) - num_pos
    assert not result.pos_is_gt.any()                               # no gt boxes added
