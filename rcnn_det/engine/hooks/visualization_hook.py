"""``DetVisualizationHook``: draws validation / test predictions on their original images.

mmdetection 3.x's hook (same arguments and behaviour) plus ``grid_images``: the predictions on
the first ``grid_images`` images of every validation / test run are tiled into ONE picture,
``{work_dir}/predictions.png``, rewritten after each run, so that a user sees what the model
finds without opening a vis backend.
"""
from __future__ import annotations

import math
import os.path as osp
import warnings
from collections.abc import Callable, Sequence

import mmcv
import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.fileio import get
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.utils import mkdir_or_exist
from mmengine.visualization import Visualizer

from rcnn_det.registry import HOOKS
from rcnn_det.structures.det_data_sample import DetDataSample
from rcnn_det.visualization.local_visualizer import make_grid

GRID_FILE_NAME = 'predictions.png'
GRID_GAP = 4  # px of white between the cells of the grid picture


def load_rgb_image(data_sample: DetDataSample, backend_args: dict | None = None,
                   network_input: torch.Tensor | None = None) -> np.ndarray:
    """The ORIGINAL image of a sample, (H, W, 3) uint8 RGB, H x W = ori_shape.

    Read from ``img_path`` when the sample has one. Otherwise (images generated in memory)
    rebuilt from the sample's un-normalised network input (3, H', W'), taken to be BGR as
    mmcv's LoadImageFromFile gives it: cropped to img_shape, resized back to ori_shape.
    """
    img_path = data_sample.get('img_path')
    if img_path:
        return mmcv.imfrombytes(get(img_path, backend_args=backend_args), channel_order='rgb')
    if network_input is None:
        raise ValueError('DetVisualizationHook: a data sample has no img_path and the batch has '
                         'no inputs to draw on.')
    img = network_input.detach().cpu().numpy().transpose(1, 2, 0)      # (3, H', W') -> HWC
    h, w = data_sample.get('img_shape', img.shape[:2])[:2]
    img = np.ascontiguousarray(img[:h, :w, ::-1]).clip(0, 255).astype(np.uint8)  # BGR -> RGB
    ori_h, ori_w = data_sample.get('ori_shape', (h, w))[:2]
    if (h, w) != (ori_h, ori_w):
        img = mmcv.imresize(img, (ori_w, ori_h))
    return img


def sample_file_name(data_sample: DetDataSample, index: int) -> str:
    """'{image file stem}.png', or '{img_id}.png' / '{index}.png' without an img_path."""
    img_path = data_sample.get('img_path')
    if img_path:
        return osp.splitext(osp.basename(img_path))[0] + '.png'
    return f"{data_sample.get('img_id', index)}.png"


@HOOKS.register_module()
class DetVisualizationHook(Hook):
    """Draw predictions of the validation and test loops with the current visualizer.

    Validation: every ``interval`` iterations, the first image of the batch (gt | prediction)
    goes to the visualizer's vis backends as 'val_img'. Test: every image goes to the backends
    as 'test_img', or, with ``test_out_dir``, to
    ``{work_dir}/{timestamp}/{test_out_dir}/{image stem}.png``. ``show`` displays instead of
    storing (and drops the vis backends), as in mmdetection.
    Grid (rcnn_det): with ``grid_images`` = K > 0, predictions (score > score_thr, no gt) on the
    first K images of each validation / test run are written as one picture,
    ``{work_dir}/predictions.png``, when the run ends. Only the main process draws; in a
    distributed run the K images are the first of its own shard.

    Args (mmdetection 3.x's, then rcnn_det's):
        draw: master switch; False draws nothing (the grid included).
        interval: validation iterations between two stored pictures.
        score_thr: predictions at or below it are not drawn.
        show: display each picture in a window (needs a display).
        wait_time: seconds a shown picture stays (0: until a key).
        test_out_dir: sub-directory of ``{work_dir}/{timestamp}`` for the test pictures.
        backend_args: mmengine file backend arguments used to read ``img_path``.
        grid_images: number of images in the predictions grid; 0 turns the grid off.
    """

    def __init__(self, draw: bool = False, interval: int = 50, score_thr: float = 0.3,
                 show: bool = False, wait_time: float = 0., test_out_dir: str | None = None,
                 backend_args: dict | None = None, grid_images: int = 0) -> None:
        self._visualizer: Visualizer = Visualizer.get_current_instance()
        self.draw = draw
        self.interval = interval
        self.score_thr = score_thr
        self.show = show
        if self.show:
            self._visualizer._vis_backends = {}
            warnings.warn('DetVisualizationHook: show=True displays the predictions without '
                          'storing them, so the vis backends are dropped.')
        self.wait_time = wait_time
        self.test_out_dir = test_out_dir
        self.backend_args = backend_args
        self.grid_images = grid_images
        if grid_images > 0 and not draw:
            warnings.warn('DetVisualizationHook: grid_images > 0 has no effect with '
                          'draw=False.')
        self._test_index = 0
        self._grid_panels: list[np.ndarray] = []

    def before_val_epoch(self, runner) -> None:
        self._grid_panels = []

    def before_test_epoch(self, runner) -> None:
        self._grid_panels = []

    def after_val_iter(self, runner, batch_idx: int, data_batch: dict | None = None,
                       outputs: Sequence[DetDataSample] | None = None) -> None:
        """Store the first image of every ``interval``-th batch; collect grid panels."""
        if not self.draw or not outputs or not is_main_process():
            return
        image = self._image_loader(outputs, data_batch)
        step = runner.iter + batch_idx
        if step % self.interval == 0:
            img_path = outputs[0].get('img_path') or 'val_img'
            self._visualizer.add_datasample(
                osp.basename(img_path) if self.show else 'val_img', image(0),
                data_sample=outputs[0], show=self.show, wait_time=self.wait_time,
                pred_score_thr=self.score_thr, step=step)
        self._collect_grid_panels(outputs, image)

    def after_test_iter(self, runner, batch_idx: int, data_batch: dict | None = None,
                        outputs: Sequence[DetDataSample] | None = None) -> None:
        """Store (or write to test_out_dir) every test image; collect grid panels."""
        if not self.draw or not outputs or not is_main_process():
            return
        out_dir = None
        if self.test_out_dir is not None:
            out_dir = osp.join(runner.work_dir, runner.timestamp, self.test_out_dir)
            mkdir_or_exist(out_dir)
        image = self._image_loader(outputs, data_batch)
        for i, data_sample in enumerate(outputs):
            self._test_index += 1
            out_file = (osp.join(out_dir, sample_file_name(data_sample, self._test_index))
                        if out_dir is not None else None)
            img_path = data_sample.get('img_path') or 'test_img'
            self._visualizer.add_datasample(
                osp.basename(img_path) if self.show else 'test_img', image(i),
                data_sample=data_sample, show=self.show, wait_time=self.wait_time,
                pred_score_thr=self.score_thr, out_file=out_file, step=self._test_index)
        self._collect_grid_panels(outputs, image)

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        self._write_grid(runner)

    def after_test_epoch(self, runner, metrics: dict | None = None) -> None:
        self._write_grid(runner)

    def _image_loader(self, outputs: Sequence[DetDataSample],
                      data_batch: dict | None) -> Callable[[int], np.ndarray]:
        """image(i): the RGB original image of outputs[i], read at most once per batch."""
        inputs = data_batch.get('inputs') if isinstance(data_batch, dict) else None
        cache: dict[int, np.ndarray] = {}

        def image(i: int) -> np.ndarray:
            if i not in cache:
                network_input = inputs[i] if inputs is not None and i < len(inputs) else None
                cache[i] = load_rgb_image(outputs[i], self.backend_args, network_input)
            return cache[i]
        return image

    def _collect_grid_panels(self, outputs: Sequence[DetDataSample],
                             image: Callable[[int], np.ndarray]) -> None:
        wanted = min(self.grid_images - len(self._grid_panels), len(outputs))
        for i in range(max(wanted, 0)):
            self._grid_panels.append(self._visualizer.draw_datasample(
                image(i), outputs[i], draw_gt=False, draw_pred=True,
                pred_score_thr=self.score_thr))

    def _write_grid(self, runner) -> None:
        if not self._grid_panels:
            return
        ncols = math.ceil(math.sqrt(len(self._grid_panels)))
        grid = make_grid(self._grid_panels, ncols, gap=GRID_GAP)
        path = osp.join(runner.work_dir, GRID_FILE_NAME)
        mmcv.imwrite(grid[..., ::-1], path)  # mmcv writes BGR
        print_log(f'DetVisualizationHook: predictions on {len(self._grid_panels)} images '
                  f'written to {osp.abspath(path)}', logger='current')
        self._grid_panels = []
