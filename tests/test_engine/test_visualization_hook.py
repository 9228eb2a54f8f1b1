"""DetVisualizationHook with a minimal stand-in runner: backend images, test_out_dir pictures and
the predictions grid land where mmdetection (and rcnn_det's grid) put them, as readable PNGs."""
from __future__ import annotations

import uuid
from types import SimpleNamespace

import mmcv
import numpy as np
import pytest
import torch
from mmengine.structures import InstanceData

from rcnn_det.engine.hooks import DetVisualizationHook
from rcnn_det.structures.det_data_sample import DetDataSample
from rcnn_det.visualization import DetLocalVisualizer

SIZES = [(40, 60), (50, 30), (40, 60), (30, 30)]  # (H, W) of the four images


def make_visualizer(tmp_path) -> DetLocalVisualizer:
    """The hook takes the latest created visualizer, as with a runner; a fresh name per test."""
    vis = DetLocalVisualizer.get_instance(
        f'test_hook_{uuid.uuid4().hex}', vis_backends=[dict(type='LocalVisBackend')],
        save_dir=str(tmp_path / 'backend'))
    vis.dataset_meta = dict(classes=('cat', 'dog'), palette=[(255, 0, 0), (0, 255, 0)])
    return vis


def make_outputs(tmp_path, with_files: bool = True) -> list[DetDataSample]:
    outputs = []
    for i, (h, w) in enumerate(SIZES):
        metainfo = dict(img_id=i, ori_shape=(h, w), img_shape=(h, w))
        if with_files:
            img_path = tmp_path / 'images' / f'img_{i}.jpg'
            mmcv.imwrite(np.full((h, w, 3), 90, np.uint8), str(img_path))
            metainfo['img_path'] = str(img_path)
        sample = DetDataSample(metainfo=metainfo)
        sample.gt_instances = InstanceData(bboxes=torch.tensor([[2., 2., 20., 20.]]),
                                           labels=torch.tensor([0]))
        sample.pred_instances = InstanceData(bboxes=torch.tensor([[3., 3., 22., 25.]]),
                                             labels=torch.tensor([i % 2]),
                                             scores=torch.tensor([0.8]))
        outputs.append(sample)
    return outputs


def fake_runner(tmp_path) -> SimpleNamespace:
    return SimpleNamespace(work_dir=str(tmp_path / 'work_dir'), timestamp='20240101_000000',
                           iter=0)


def run_val(hook, runner, outputs, batch_size=2) -> None:
    hook.before_val_epoch(runner)
    for batch_idx, start in enumerate(range(0, len(outputs), batch_size)):
        batch = outputs[start:start + batch_size]
        hook.after_val_iter(runner, batch_idx, data_batch=dict(data_samples=batch),
                            outputs=batch)
    hook.after_val_epoch(runner, metrics={})


def test_val_run_writes_backend_images_and_one_predictions_grid(tmp_path):
    make_visualizer(tmp_path)
    hook = DetVisualizationHook(draw=True, interval=1, grid_images=3)
    runner = fake_runner(tmp_path)
    run_val(hook, runner, make_outputs(tmp_path))
    # mmdet's behaviour: the first image of every interval-th batch, gt | prediction.
    for step in (0, 1):
        stored = mmcv.imread(str(tmp_path / 'backend/vis_data/vis_image' / f'val_img_{step}.png'))
        h, w = SIZES[2 * step]
        assert stored.shape == (h, 2 * w, 3)
    # The grid: predictions only on the first 3 images, 2 columns of 50 x 60 cells, 4 px gaps.
    grid = mmcv.imread(str(tmp_path / 'work_dir' / 'predictions.png'), channel_order='rgb')
    assert grid.shape == (2 * 50 + 4, 2 * 60 + 4, 3)
    first = grid[:40, :60]
    assert (first != 90).any()                         # something was drawn on image 0 ...
    assert (first[30:, 40:] == 90).all()               # ... only around its box
    assert (grid[54:104, 64:] == 255).all()            # the 4th cell stays empty padding


def test_grid_is_rewritten_per_run_and_interval_limits_backend_images(tmp_path):
    make_visualizer(tmp_path)
    hook = DetVisualizationHook(draw=True, interval=2, grid_images=1)
    runner = fake_runner(tmp_path)
    outputs = make_outputs(tmp_path)
    run_val(hook, runner, outputs, batch_size=1)
    stored = sorted(p.name for p in (tmp_path / 'backend/vis_data/vis_image').iterdir())
    assert stored == ['val_img_0.png', 'val_img_2.png']
    run_val(hook, runner, outputs[1:], batch_size=1)   # a second run starts a new grid
    grid = mmcv.imread(str(tmp_path / 'work_dir' / 'predictions.png'))
    assert grid.shape == (*SIZES[1], 3)


def test_test_run_writes_one_png_per_image_under_test_out_dir(tmp_path):
    make_visualizer(tmp_path)
    hook = DetVisualizationHook(draw=True, test_out_dir='vis', grid_images=2)
    runner = fake_runner(tmp_path)
    outputs = make_outputs(tmp_path)
    hook.before_test_epoch(runner)
    hook.after_test_iter(runner, 0, data_batch=None, outputs=outputs[:2])
    hook.after_test_iter(runner, 1, data_batch=None, outputs=outputs[2:])
    hook.after_test_epoch(runner, metrics={})
    out_dir = tmp_path / 'work_dir' / '20240101_000000' / 'vis'
    for i, (h, w) in enumerate(SIZES):
        assert mmcv.imread(str(out_dir / f'img_{i}.png')).shape == (h, 2 * w, 3)
    # Two cells of the largest size (50 x 60), side by side.
    assert mmcv.imread(str(tmp_path / 'work_dir' / 'predictions.png')).shape == (50, 124, 3)


def test_images_without_img_path_are_drawn_from_the_network_input(tmp_path):
    make_visualizer(tmp_path)
    hook = DetVisualizationHook(draw=True, interval=1, grid_images=2)
    runner = fake_runner(tmp_path)
    outputs = make_outputs(tmp_path, with_files=False)[:2]
    inputs = [torch.full((3, h, w), 90, dtype=torch.uint8) for h, w in SIZES[:2]]
    hook.before_val_epoch(runner)
    hook.after_val_iter(runner, 0, data_batch=dict(inputs=inputs, data_samples=outputs),
                        outputs=outputs)
    hook.after_val_epoch(runner)
    grid = mmcv.imread(str(tmp_path / 'work_dir' / 'predictions.png'))
    assert grid.shape == (50, 124, 3)


def test_draw_false_writes_nothing(tmp_path):
    make_visualizer(tmp_path)
    with pytest.warns(UserWarning, match='draw=False'):
        hook = DetVisualizationHook(draw=False, interval=1, grid_images=3)
    runner = fake_runner(tmp_path)
    run_val(hook, runner, make_outputs(tmp_path))
    assert not (tmp_path / 'work_dir').exists() and not (tmp_path / 'backend').exists()
