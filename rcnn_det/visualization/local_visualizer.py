"""``DetLocalVisualizer``: draws boxes, class names, scores and masks of a ``DetDataSample``.

Shape letters: N instances, H x W the image the instances belong to (the ORIGINAL image for
predictions), C classes. Images are (H, W, 3) uint8 RGB throughout; colours are RGB 0..255.
Drawing goes through mmengine's Visualizer primitives, which render with matplotlib's Agg canvas
(no display needed unless ``show=True``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import mmcv
import numpy as np
import torch
from mmengine.dist import master_only
from mmengine.structures import InstanceData
from mmengine.visualization import Visualizer
from mmengine.visualization.utils import color_str2rgb

from rcnn_det.registry import VISUALIZERS

Color = tuple[int, int, int]
ColorArg = str | Color | Sequence[Color] | None

# mmdet's label font: 13 pt scaled by box area between these areas (px^2), clipped to 0.5..1.
LABEL_FONT_SIZE = 13
MIN_SCALE_AREA, MAX_SCALE_AREA = 800, 30000
LABEL_BOX_STYLE = dict(facecolor='black', alpha=0.8, pad=0.7, edgecolor='none')


def class_palette(palette: ColorArg, num_classes: int) -> list[Color]:
    """RGB colour of each of ``num_classes`` labels, mmdet's get_palette rules.

    palette: a list of RGB tuples (one per class), one RGB tuple or a matplotlib colour name
    (every class alike), or None / 'random' (fixed pseudo-random colours, seed 42 as mmdet).
    A list shorter than num_classes is cycled, so an unexpected label never fails a drawing.
    """
    if palette is None or palette == 'random':
        colors = np.random.RandomState(42).randint(0, 256, size=(max(num_classes, 1), 3))
        return [tuple(int(c) for c in color) for color in colors]
    if isinstance(palette, str):
        return [color_str2rgb(palette)] * num_classes
    if len(palette) == 3 and all(isinstance(c, (int, np.integer)) for c in palette):
        return [tuple(int(c) for c in palette)] * num_classes
    colors = [tuple(int(c) for c in color) for color in palette]
    return [colors[i % len(colors)] for i in range(num_classes)]


def adaptive_scales(areas: np.ndarray) -> np.ndarray:
    """(N,) box areas px^2 -> (N,) font scales in [0.5, 1]: small boxes get small labels."""
    scales = 0.5 + (areas - MIN_SCALE_AREA) / (MAX_SCALE_AREA - MIN_SCALE_AREA)
    return np.clip(scales, 0.5, 1.0)


def make_grid(images: Sequence[np.ndarray], ncols: int, pad_value: int = 255,
              gap: int = 0) -> np.ndarray:
    """Tile images of different sizes into one picture, row by row.

    images: K arrays (H_k, W_k, 3) uint8. Every cell is max(H_k) x max(W_k), the image at its
    top-left, the rest ``pad_value``; ``gap`` px of ``pad_value`` separate the cells.
    Returns (rows * Hc + (rows - 1) * gap, cols * Wc + (cols - 1) * gap, 3) uint8 with
    cols = min(ncols, K), rows = ceil(K / cols).
    """
    if len(images) == 0:
        raise ValueError('make_grid: no images to put in a grid.')
    if ncols < 1:
        raise ValueError(f'make_grid: ncols must be >= 1, got {ncols}.')
    channels = {img.shape[2] if img.ndim == 3 else None for img in images}
    if len(channels) != 1 or None in channels:
        raise ValueError('make_grid: images must all be (H, W, C) with the same C, got shapes '
                         f'{[img.shape for img in images]}.')
    cols = min(ncols, len(images))
    rows = math.ceil(len(images) / cols)
    cell_h = max(img.shape[0] for img in images)
    cell_w = max(img.shape[1] for img in images)
    grid = np.full((rows * cell_h + (rows - 1) * gap, cols * cell_w + (cols - 1) * gap,
                    channels.pop()), pad_value, dtype=np.uint8)
    for k, img in enumerate(images):
        top, left = (k // cols) * (cell_h + gap), (k % cols) * (cell_w + gap)
        grid[top:top + img.shape[0], left:left + img.shape[1]] = img
    return grid


def blend_masks(image: np.ndarray, masks: np.ndarray, colors: np.ndarray,
                alpha: float) -> np.ndarray:
    """Paint masks semi-transparently: (H, W, 3) uint8, (N, H, W) bool, (N, 3) RGB -> (H, W, 3).

    A pixel under several masks takes the colour of the last one (drawn on top), mixed as
    (1 - alpha) * image + alpha * colour; pixels under no mask are unchanged.
    """
    covered = masks.any(axis=0)                                         # (H, W)
    top = len(masks) - 1 - masks[::-1].argmax(axis=0)                   # (H, W) last mask index
    color = np.asarray(colors, dtype=np.float32)[top]                   # (H, W, 3)
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * color
    return np.where(covered[..., None], mixed.round().clip(0, 255), image).astype(np.uint8)


def instance_array(value: torch.Tensor | np.ndarray | object) -> np.ndarray:
    """A CPU numpy array of an instance field (tensor, array, or mmdet-style BitmapMasks)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if hasattr(value, 'to_ndarray'):
        return value.to_ndarray()
    return np.asarray(value)


@VISUALIZERS.register_module()
class DetLocalVisualizer(Visualizer):
    """Draws detection ground truth and predictions; ``add_datasample`` stores or shows them.

    add_datasample(name, image, data_sample) with image (H, W, 3) RGB of the ORIGINAL image and
    data_sample.pred_instances: bboxes (N, 4) xyxy px, labels (N,), scores (N,), masks (N, H, W)
    optional -> gt | prediction side by side (W doubles when both are drawn), written to
    ``out_file`` (PNG/JPG by extension) or else to the vis backends.
    Class names and colours come from ``dataset_meta['classes']`` / ``['palette']`` (the runner's
    val/test loop sets dataset_meta from the dataset's metainfo).

    Args (mmdetection 3.x's):
        name: the mmengine instance name (Visualizer is a singleton per name).
        image: an optional image to start drawing on.
        vis_backends, save_dir: mmengine's storage backends and their directory.
        bbox_color, text_color, mask_color: None (per-class palette), one colour for all, or a
            list of RGB tuples, one per class.
        line_width: box edge width in px.
        alpha: opacity of box edges and of mask fill.
    """

    def __init__(self, name: str = 'visualizer', image: np.ndarray | None = None,
                 vis_backends: list[dict] | dict | None = None, save_dir: str | None = None,
                 bbox_color: ColorArg = None, text_color: ColorArg = (200, 200, 200),
                 mask_color: ColorArg = None, line_width: int | float = 3,
                 alpha: float = 0.8) -> None:
        super().__init__(name=name, image=image, vis_backends=vis_backends, save_dir=save_dir)
        self.bbox_color = bbox_color
        self.text_color = text_color
        self.mask_color = mask_color
        self.line_width = line_width
        self.alpha = alpha
        self.dataset_meta = {}  # the runner's val/test loop replaces it with dataset.metainfo

    def draw_instances(self, image: np.ndarray, instances: InstanceData,
                       classes: Sequence[str] | None, palette: ColorArg) -> np.ndarray:
        """Masks (blended in the class colour), then boxes, then 'name: score' labels.

        instances: bboxes (N, 4) xyxy px of ``image``, labels (N,), optional scores (N,) and
        masks (N, H, W). Masks of another size than ``image`` (ground truth kept in the resized
        network-input frame) are skipped rather than drawn misplaced.
        Returns the drawn (H, W, 3) uint8 RGB image.
        """
        labels = instance_array(instances.labels).astype(np.int64).reshape(-1)   # (N,)
        if len(labels) == 0:
            return image.copy()  # nothing to draw: skip rendering the canvas
        num_colors = max(len(classes) if classes else 0, int(labels.max()) + 1)
        if 'masks' in instances:
            masks = instance_array(instances.masks).astype(bool)                 # (N, H, W)
            if masks.shape[1:] == image.shape[:2]:
                # One numpy blend instead of mmengine's draw_binary_masks, which renders the
                # canvas once more and makes ~6 full-image passes per mask (0.5 s for 20 masks
                # of 1333 x 800 on one core); this runs inside the validation loop.
                mask_colors = class_palette(palette if self.mask_color is None
                                            else self.mask_color, num_colors)
                image = blend_masks(image, masks, np.array(mask_colors)[labels], self.alpha)
        self.set_image(image)
        if 'bboxes' not in instances:
            return self.get_image()
        bboxes = instance_array(instances.bboxes).astype(np.float64).reshape(-1, 4)
        # A diverging model can emit NaN/inf or inverted boxes; mmengine asserts on them, and a
        # drawing must not stop the validation loop.
        keep = np.isfinite(bboxes).all(1) & (bboxes[:, 2] >= bboxes[:, 0]) & (
            bboxes[:, 3] >= bboxes[:, 1])
        bboxes, kept = bboxes[keep], np.flatnonzero(keep)
        if len(bboxes) == 0:
            return self.get_image()
        box_colors = class_palette(palette if self.bbox_color is None else self.bbox_color,
                                   num_colors)
        text_colors = class_palette(self.text_color, num_colors)
        self.draw_bboxes(bboxes, edge_colors=[box_colors[i] for i in labels[kept]],
                         alpha=self.alpha, line_widths=self.line_width)
        texts = [classes[i] if classes is not None and i < len(classes) else f'class {i}'
                 for i in labels[kept]]
        if 'scores' in instances:
            scores = instance_array(instances.scores).reshape(-1)[kept]
            texts = [f'{text}: {round(float(s) * 100, 1)}' for text, s in zip(texts, scores)]
        areas = (bboxes[:, 2] - bboxes[:, 0]) * (bboxes[:, 3] - bboxes[:, 1])
        self.draw_texts(texts, bboxes[:, :2] + self.line_width,
                        colors=[text_colors[i] for i in labels[kept]],
                        font_sizes=[int(LABEL_FONT_SIZE * s) for s in adaptive_scales(areas)],
                        bboxes=[LABEL_BOX_STYLE] * len(texts))
        return self.get_image()

    def draw_datasample(self, image: np.ndarray, data_sample=None, draw_gt: bool = True,
                        draw_pred: bool = True, pred_score_thr: float = 0.3) -> np.ndarray:
        """The picture ``add_datasample`` stores, returned instead: (H, k*W, 3) uint8 RGB.

        k = number of drawn panels: gt_instances (if drawn and labelled), then pred_instances
        with score > pred_score_thr (if drawn and present); k = 0 returns the image itself.
        """
        image = np.asarray(image).clip(0, 255).astype(np.uint8)
        meta = self.dataset_meta or {}
        classes, palette = meta.get('classes'), meta.get('palette')
        panels = []
        if data_sample is not None:
            data_sample = data_sample.cpu()
            # a test pipeline without LoadAnnotations packs an empty gt_instances
            if draw_gt and 'gt_instances' in data_sample and 'labels' in data_sample.gt_instances:
                panels.append(self.draw_instances(image, data_sample.gt_instances, classes,
                                                  palette))
            if draw_pred and 'pred_instances' in data_sample:
                pred = data_sample.pred_instances
                pred = pred[pred.scores > pred_score_thr]
                panels.append(self.draw_instances(image, pred, classes, palette))
        return np.concatenate(panels, axis=1) if panels else image

    @master_only
    def add_datasample(self, name: str, image: np.ndarray, data_sample=None,
                       draw_gt: bool = True, draw_pred: bool = True, show: bool = False,
                       wait_time: float = 0, out_file: str | None = None,
                       pred_score_thr: float = 0.3, step: int = 0) -> None:
        """Draw (see draw_datasample), then show it, and write it to ``out_file`` if given,
        else hand it to the vis backends under ``name`` at ``step`` (mmdet's behaviour)."""
        drawn = self.draw_datasample(image, data_sample, draw_gt=draw_gt, draw_pred=draw_pred,
                                     pred_score_thr=pred_score_thr)
        self.set_image(drawn)  # so that get_image() returns the stored picture, as in mmdet
        if show:
            self.show(drawn, win_name=name, wait_time=wait_time)
        if out_file is not None:
            mmcv.imwrite(drawn[..., ::-1], out_file)  # mmcv writes BGR
        else:
            self.add_image(name, drawn, step)
