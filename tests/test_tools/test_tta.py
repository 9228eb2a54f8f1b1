"""Test-time augmentation: DetTTAModel's merge by hand, and tools/test.py --tta through the
config keys of mmdetection (tta_model, tta_pipeline) for the R-CNN, ATSS and DETR families."""
from __future__ import annotations

import pickle
import re

import pytest
import torch
from mmengine.structures import InstanceData

from conftest import (ATSS_DEMO_CONFIG, DEMO_CONFIG, DETR_DEMO_CONFIG, PYTHON, REPO_ROOT,
                      run_tool, write_tiny_demo_config)
from rcnn_det.apis import init_detector
from rcnn_det.models.test_time_augs import DetTTAModel
from rcnn_det.structures import DetDataSample


def prediction(boxes, scores, labels, flip: bool) -> DetDataSample:
    sample = DetDataSample(metainfo=dict(ori_shape=(50, 100), flip=flip,
                                         flip_direction='horizontal' if flip else None))
    sample.pred_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32),
                                         scores=torch.tensor(scores),
                                         labels=torch.tensor(labels))
    return sample


def test_flipped_predictions_are_brought_back_and_merged_by_class():
    tta = DetTTAModel(module=dict(type='ATSS', backbone=dict(type='ResNet', depth=18),
                                  bbox_head=dict(type='ATSSHead', num_classes=2, in_channels=8)),
                      tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=3))
    plain = prediction([[10, 10, 30, 30], [60, 5, 90, 40]], [0.9, 0.4], [0, 1], flip=False)
    # the same objects seen in the mirrored image (x -> 100 - x), plus one more
    flipped = prediction([[70, 10, 90, 30], [10, 5, 40, 40], [0, 0, 5, 5]], [0.8, 0.6, 0.3],
                         [0, 0, 1], flip=True)
    merged = tta.merge_preds([[plain, flipped]])[0].pred_instances
    # [10, 10, 30, 30] class 0 twice: the better one stays; [60, 5, 90, 40] is there as class 1
    # (score 0.4) and class 0 (0.6): different classes are not merged; max_per_img = 3
    torch.testing.assert_close(merged.bboxes, torch.tensor([[10., 10., 30., 30.],
                                                            [60., 5., 90., 40.],
                                                            [60., 5., 90., 40.]]))
    torch.testing.assert_close(merged.scores, torch.tensor([0.9, 0.6, 0.4]))
    assert merged.labels.tolist() == [0, 0, 1]


def random_checkpoint(config, path):
    """A checkpoint of the config's model with random weights (seed 0)."""
    torch.manual_seed(0)
    torch.save({'state_dict': init_detector(config).state_dict(), 'meta': {}}, path)
    return path


ONE_VIEW = """
tta_model = dict(type='DetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.99),
                                                  max_per_img=100))
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(224, 224), keep_ratio=True)],
        [dict(type='RandomFlip', prob=0.0)],
        [dict(type='LoadAnnotations', with_bbox=True)],
        [dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                               'scale_factor', 'flip', 'flip_direction'))]])]
"""


def test_one_view_tta_equals_the_plain_test(tmp_path, tiny_shapes_root):
    cfg = write_tiny_demo_config(tmp_path / 'tiny.py', tiny_shapes_root, extra=ONE_VIEW)
    checkpoint = random_checkpoint(cfg, tmp_path / 'model.pth')
    outputs = {}
    for name, extra in (('plain', []), ('tta', ['--tta'])):
        run_tool([PYTHON, str(REPO_ROOT / 'tools/test.py'), str(cfg), str(checkpoint),
                  '--work-dir', str(tmp_path / name), '--out', f'{name}.pkl', *extra],
                 cwd=tmp_path)
        outputs[name] = pickle.load(open(tmp_path / f'{name}.pkl', 'rb'))
    assert len(outputs['plain']) == len(outputs['tta']) == 4
    for a, b in zip(outputs['plain'], outputs['tta']):
        assert a['img_id'] == b['img_id'] and len(a['pred_instances']['scores']) > 0
        for key in ('bboxes', 'scores', 'labels'):
            torch.testing.assert_close(b['pred_instances'][key], a['pred_instances'][key])


@pytest.mark.parametrize('config', [DEMO_CONFIG, ATSS_DEMO_CONFIG, DETR_DEMO_CONFIG],
                         ids=['faster_rcnn', 'atss', 'deformable_detr'])
def test_tta_with_the_default_flip(config, tmp_path, tiny_shapes_root):
    cfg = write_tiny_demo_config(tmp_path / 'tiny.py', tiny_shapes_root, base=config)
    checkpoint = random_checkpoint(cfg, tmp_path / 'model.pth')
    log = run_tool([PYTHON, str(REPO_ROOT / 'tools/test.py'), str(cfg), str(checkpoint),
                    '--work-dir', str(tmp_path / 'work'), '--tta', '--out', 'tta.pkl'],
                   cwd=tmp_path).stdout
    assert 'using DetTTAModel' in log and 'with and without a horizontal flip' in log
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log)
    results = pickle.load(open(tmp_path / 'tta.pkl', 'rb'))
    for result in results:
        boxes = result['pred_instances']['bboxes']
        assert len(boxes) > 0 and (boxes[:, 2] <= 128 + 1e-3).all()  # the original width


MULTI_SCALE_FLIP = """
tta_model = dict(type='DetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5),
                                                  max_per_img=100))
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(160, 160), keep_ratio=True),
         dict(type='Resize', scale=(256, 256), keep_ratio=True)],
        [dict(type='RandomFlip', prob=1.0), dict(type='RandomFlip', prob=0.0)],
        [dict(type='LoadAnnotations', with_bbox=True)],
        [dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                               'scale_factor', 'flip', 'flip_direction'))]])]
"""


def test_two_scales_and_a_flip_from_the_config(tmp_path, tiny_shapes_root):
    """Four views per image (two scales, flipped and not), merged into one prediction each."""
    cfg = write_tiny_demo_config(tmp_path / 'tiny.py', tiny_shapes_root, extra=MULTI_SCALE_FLIP)
    checkpoint = random_checkpoint(cfg, tmp_path / 'model.pth')
    log = run_tool([PYTHON, str(REPO_ROOT / 'tools/test.py'), str(cfg), str(checkpoint),
                    '--work-dir', str(tmp_path / 'work'), '--tta', '--out', 'tta.pkl'],
                   cwd=tmp_path).stdout
    assert 'using DetTTAModel' not in log and re.search(r'coco/bbox_mAP: -?[0-9.]+', log)
    results = pickle.load(open(tmp_path / 'tta.pkl', 'rb'))
    assert len(results) == 4
    for result in results:
        pred = result['pred_instances']
        assert 0 < len(pred['scores']) <= 100
        assert (pred['scores'][:-1] >= pred['scores'][1:]).all()   # merged: one list, best first
