"""DetLocalVisualizer draws where the instances are, in the class colours; make_grid tiles."""
from __future__ import annotations

import uuid

import mmcv
import numpy as np
import pytest
import torch
from mmengine.structures import InstanceData

from rcnn_det.structures.det_data_sample import DetDataSample
from rcnn_det.visualization import DetLocalVisualizer, class_palette, make_grid
from rcnn_det.visualization.local_visualizer import blend_masks

CLASSES = ('cat', 'dog')
PALETTE = [(255, 0, 0), (0, 255, 0)]
GRAY = 100


def visualizer(**kwargs) -> DetLocalVisualizer:
    # mmengine keeps one Visualizer per name: a fresh name per test.
    vis = DetLocalVisualizer.get_instance(f'test_vis_{uuid.uuid4().hex}', **kwargs)
    vis.dataset_meta = dict(classes=CLASSES, palette=PALETTE)
    return vis


def gray_image(h: int = 60, w: int = 80) -> np.ndarray:
    return np.full((h, w, 3), GRAY, dtype=np.uint8)


def data_sample(score: float = 0.9) -> DetDataSample:
    sample = DetDataSample(metainfo=dict(ori_shape=(60, 80)))
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[10., 10., 50., 40.]]),
                                       labels=torch.tensor([1]))
    sample.pred_instances = InstanceData(bboxes=torch.tensor([[12., 12., 52., 42.]]),
                                         labels=torch.tensor([1]), scores=torch.tensor([score]))
    return sample


def test_gt_and_prediction_side_by_side_drawn_where_boxes_are(tmp_path):
    vis = visualizer()
    out_file = tmp_path / 'drawn.png'
    vis.add_datasample('img', gray_image(), data_sample(), out_file=str(out_file))
    drawn = mmcv.imread(str(out_file), channel_order='rgb')
    assert drawn.shape == (60, 160, 3)
    gt, pred = drawn[:, :80], drawn[:, 80:]
    # The left edge of each box is drawn in the dog's colour (green dominates) ...
    assert gt[25, 10, 1] > gt[25, 10, 0] + 50 and pred[25, 12, 1] > pred[25, 12, 0] + 50
    # ... and far from boxes and labels the image is untouched.
    assert (gt[50:, 60:] == GRAY).all() and (pred[50:, 60:] == GRAY).all()
    # The label box sits at the top-left corner inside the box (dark background, light text).
    assert (pred[14:22, 16:40] != GRAY).any()


def test_predictions_below_score_threshold_are_not_drawn():
    vis = visualizer()
    drawn = vis.draw_datasample(gray_image(), data_sample(score=0.2), draw_gt=False,
                                pred_score_thr=0.3)
    assert drawn.shape == (60, 80, 3) and (drawn == GRAY).all()
    drawn = vis.draw_datasample(gray_image(), data_sample(score=0.2), draw_gt=False,
                                pred_score_thr=0.1)
    assert (drawn != GRAY).any()


def test_sample_without_ground_truth_draws_the_prediction_only():
    """A test pipeline without LoadAnnotations packs an empty gt_instances: one panel."""
    sample = data_sample()
    sample.gt_instances = InstanceData()
    drawn = visualizer().draw_datasample(gray_image(), sample)
    assert drawn.shape == (60, 80, 3) and (drawn != GRAY).any()


def test_masks_blend_the_class_colour():
    vis = visualizer(alpha=0.5)
    mask = torch.zeros(2, 60, 80, dtype=torch.bool)
    mask[0, 30:50, 40:70] = True   # cat: red
    mask[1, 5:20, 5:20] = True     # dog: green
    drawn = vis.draw_instances(gray_image(), InstanceData(labels=torch.tensor([0, 1]),
                                                          masks=mask), CLASSES, PALETTE)
    # 0.5 * 100 + 0.5 * 255 = 177.5 in the class channel, 0.5 * 100 = 50 in the others.
    np.testing.assert_allclose(drawn[40, 55], [178, 50, 50], atol=2)
    np.testing.assert_allclose(drawn[12, 12], [50, 178, 50], atol=2)
    assert (drawn[0:4, 30:80] == GRAY).all()


def test_blend_masks_puts_the_last_mask_on_top():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2] = True
    masks[1, 1:3] = True
    out = blend_masks(np.zeros((4, 4, 3), np.uint8), masks, np.array([[200, 0, 0], [0, 200, 0]]),
                      alpha=0.5)
    assert out[0, 0].tolist() == [100, 0, 0] and out[1, 0].tolist() == [0, 100, 0]
    assert out[3, 0].tolist() == [0, 0, 0]


def test_class_palette_rules():
    assert class_palette(PALETTE, 3) == [(255, 0, 0), (0, 255, 0), (255, 0, 0)]  # cycled
    assert class_palette((1, 2, 3), 2) == [(1, 2, 3), (1, 2, 3)]
    assert class_palette('red', 1) == [(255, 0, 0)]
    assert class_palette(None, 4) == class_palette('random', 4) and len(class_palette(None, 4)) == 4


def test_make_grid_shapes_and_placement():
    images = [np.full((10, 20, 3), 1, np.uint8), np.full((30, 5, 3), 2, np.uint8),
              np.full((7, 7, 3), 3, np.uint8)]
    grid = make_grid(images, ncols=2)
    assert grid.shape == (60, 40, 3) and grid.dtype == np.uint8
    assert (grid[:10, :20] == 1).all() and (grid[:30, 20:25] == 2).all()
    assert (grid[30:37, :7] == 3).all() and (grid[10:30, :20] == 255).all()
    assert make_grid(images, ncols=2, gap=4).shape == (64, 44, 3)
    assert make_grid(images, ncols=10).shape == (30, 60, 3)   # more columns than images
    with pytest.raises(ValueError):
        make_grid([], ncols=2)
