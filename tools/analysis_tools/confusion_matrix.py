"""The confusion matrix of a detector's predictions on its test dataset (mmdetection 3.x's tool):
``python tools/analysis_tools/confusion_matrix.py CONFIG PREDICTIONS.pkl SAVE_DIR [--show]
[--color-theme plasma] [--score-thr 0.3] [--tp-iou-thr 0.5] [--nms-iou-thr IOU]
[--cfg-options ...]``.

PREDICTIONS.pkl is what ``tools/test.py CONFIG CHECKPOINT --out PREDICTIONS.pkl`` writes
(``DumpDetResults``: one dict per image with ``img_id``, ``img_path`` and ``pred_instances``).
The ground truth is the config's test dataset, matched to the predictions by ``img_id`` (by
``img_path`` when the predictions carry no ids). Writes ``SAVE_DIR/confusion_matrix.png`` (each
row normalised to percent, as mmdetection plots it) and the raw counts to
``SAVE_DIR/confusion_matrix.json`` (``{"classes": [..., "background"], "matrix": [[...]]}``),
and prints the counts.

Shape letters: G ground-truth boxes of an image (crowd regions left out), N detections of an
image, C classes; the matrix is (C + 1, C + 1), rows ground truth, columns prediction, index C
the background.
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import pickle
import sys
from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import BaseDataset
from mmengine.fileio import load
from mmengine.registry import DefaultScope
from mmengine.utils import ProgressBar, mkdir_or_exist
from torchvision.ops import batched_nms

from rcnn_det.registry import DATASETS
from rcnn_det.structures import bbox_overlaps

PRED_KEYS = ('bboxes', 'scores', 'labels')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Generate confusion matrix from detection results')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('prediction_path',
                        help='the .pkl of predictions written by tools/test.py --out')
    parser.add_argument('save_dir', help='directory where confusion matrix will be saved')
    parser.add_argument('--show', action='store_true', help='show confusion matrix')
    parser.add_argument('--color-theme', default='plasma',
                        help='theme of the matrix color map')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='score threshold to filter detection bboxes')
    parser.add_argument('--tp-iou-thr', type=float, default=0.5,
                        help='IoU threshold to be considered as matched')
    parser.add_argument('--nms-iou-thr', type=float, default=None,
                        help='class-wise NMS IoU threshold applied to the kept detections, '
                        'only when users want to change the detector\'s NMS IoU threshold')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. test_dataloader.dataset.'
                        'ann_file=annotations/other.json')
    return parser.parse_args()


def analyze_per_img_dets(confusion_matrix: np.ndarray, gts: Sequence[Mapping],
                         result: Mapping, score_thr: float = 0, tp_iou_thr: float = 0.5,
                         nms_iou_thr: float | None = None) -> None:
    """Add one image's counts to ``confusion_matrix`` (C + 1, C + 1), in place.

    Args:
        gts: the image's dataset instances, ``dict(bbox=[x1, y1, x2, y2], bbox_label,
            ignore_flag)``; crowd regions (``ignore_flag=1``) are left out, as mmdetection 2.x's
            ``get_ann_info`` left them out of ``bboxes``.
        result: ``pred_instances``: ``bboxes`` (N, 4) xyxy px, ``scores`` (N,), ``labels`` (N,)
            in [0, C); tensors or arrays.

    Detections with ``score >= score_thr`` are kept (then, with ``nms_iou_thr``, class-wise
    NMS). As mmdetection's loops count them: every (kept detection, ground truth) pair with
    IoU >= ``tp_iou_thr`` adds 1 to (gt class, det class), whatever the classes, so a detection
    over two ground truths counts twice; a kept detection with no such pair adds 1 to
    (background, det class); a ground truth with no such pair of its own class adds 1 to
    (gt class, background).
    """
    num_classes = confusion_matrix.shape[0] - 1
    gts = [gt for gt in gts if not gt.get('ignore_flag', 0)]
    gt_bboxes = torch.tensor([gt['bbox'] for gt in gts], dtype=torch.float32).reshape(-1, 4)
    gt_labels = torch.tensor([gt['bbox_label'] for gt in gts], dtype=torch.long)
    bboxes, scores, labels = (torch.as_tensor(result[key]) for key in PRED_KEYS)
    bboxes, scores, labels = bboxes.float().reshape(-1, 4), scores.float(), labels.long()
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if outside.numel():
        raise ValueError(f'detection label {int(outside[0])} is not one of the dataset\'s '
                         f'{num_classes} classes: were the predictions made with this config?')
    keep = scores >= score_thr
    bboxes, scores, labels = bboxes[keep], scores[keep], labels[keep]
    if nms_iou_thr is not None:
        keep = batched_nms(bboxes, scores, labels, nms_iou_thr)
        bboxes, labels = bboxes[keep], labels[keep]
    hits = bbox_overlaps(bboxes, gt_bboxes) >= tp_iou_thr                  # (N, G)
    det_index, gt_index = hits.nonzero(as_tuple=True)
    true_positive = (hits & (labels[:, None] == gt_labels[None, :])).any(dim=0)   # (G,)
    # Flat cell indices row * (C + 1) + column of every count, summed by one bincount.
    cells = torch.cat([gt_labels[gt_index] * (num_classes + 1) + labels[det_index],
                       num_classes * (num_classes + 1) + labels[~hits.any(dim=1)],
                       gt_labels[~true_positive] * (num_classes + 1) + num_classes])
    counts = torch.bincount(cells, minlength=confusion_matrix.size)
    confusion_matrix += counts.view(confusion_matrix.shape).numpy()


def _image_key(value: object, key: str) -> object:
    return osp.normpath(str(value)) if key == 'img_path' else value


def match_predictions(dataset: BaseDataset, results: Sequence[Mapping]) -> list[int]:
    """The dataset index of each per-image result, by ``img_id`` (``img_path`` when a result
    has no ``img_id``). Raises ValueError unless the results cover every image once (as
    mmdetection asserts ``len(dataset) == len(results)``)."""
    key = 'img_id' if all('img_id' in res for res in results) else 'img_path'
    if not all(key in res for res in results):
        raise ValueError('some predictions carry neither img_id nor img_path: they cannot be '
                         'matched to the images of the test dataset')
    infos = [dataset.get_data_info(index) for index in range(len(dataset))]
    index_of = {_image_key(info.get(key), key): index for index, info in enumerate(infos)}
    unknown = [res.get(key) for res in results if _image_key(res.get(key), key) not in index_of]
    if unknown:
        raise ValueError(f'{len(unknown)} of the {len(results)} predictions are of images that '
                         f'are not in the test dataset ({key} {unknown[:5]}); were they made '
                         'with this config\'s test dataset?')
    indices = [index_of[_image_key(res[key], key)] for res in results]
    if len(set(indices)) != len(indices):
        raise ValueError(f'the predictions hold {len(indices) - len(set(indices))} image(s) '
                         f'more than once (same {key})')
    if len(indices) != len(dataset):
        raise ValueError(f'the predictions cover {len(indices)} of the {len(dataset)} images of '
                         'the test dataset: run tools/test.py --out on the same config')
    return indices


def calculate_confusion_matrix(dataset: BaseDataset, results: Sequence[Mapping],
                               score_thr: float = 0, nms_iou_thr: float | None = None,
                               tp_iou_thr: float = 0.5) -> np.ndarray:
    """(C + 1, C + 1) int64 counts over the images of ``results`` (``DumpDetResults`` dicts),
    each matched to its ground truth in ``dataset`` (or a dataset wrapper: anything with
    ``metainfo`` and ``get_data_info``); see ``analyze_per_img_dets``."""
    num_classes = len(dataset.metainfo['classes'])
    confusion_matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    indices = match_predictions(dataset, results)
    prog_bar = ProgressBar(len(results))
    for index, per_img_res in zip(indices, results):
        gts = dataset.get_data_info(index)['instances']
        analyze_per_img_dets(confusion_matrix, gts, per_img_res['pred_instances'], score_thr,
                             tp_iou_thr, nms_iou_thr)
        prog_bar.update()
    return confusion_matrix


def plot_confusion_matrix(confusion_matrix: np.ndarray, labels: Sequence[str],
                          save_dir: str | None = None, show: bool = True,
                          title: str = 'Normalized Confusion Matrix',
                          color_theme: str = 'plasma') -> None:
    """Draw the matrix with each row in percent of its sum (truncated to whole percents, as
    mmdetection writes them); a row without any count shows '-'. Saved as
    ``save_dir/confusion_matrix.png`` when ``save_dir`` is given."""
    sums = confusion_matrix.sum(axis=1, keepdims=True)
    percent = np.divide(confusion_matrix * 100.0, sums, where=sums > 0,
                        out=np.full(confusion_matrix.shape, np.nan))
    num_classes = len(labels)
    # mmdetection's 0.5 x 0.4 inch per class, at least large enough for the title
    fig, ax = plt.subplots(figsize=(max(0.5 * num_classes, 4.0), max(0.4 * num_classes, 3.2)),
                           dpi=180)
    im = ax.imshow(percent, cmap=plt.get_cmap(color_theme))
    fig.colorbar(mappable=im, ax=ax)
    ax.set_title(title, fontdict={'weight': 'bold', 'size': 12})
    ax.set_ylabel('Ground Truth Label', fontdict={'size': 10})
    ax.set_xlabel('Prediction Label', fontdict={'size': 10})
    ticks = np.arange(num_classes)
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.set_xticks(ticks[:-1] + 0.5, minor=True)     # grid lines between the cells
    ax.set_yticks(ticks[:-1] + 0.5, minor=True)
    ax.grid(True, which='minor', linestyle='-')
    ax.tick_params(which='minor', length=0)
    ax.tick_params(axis='x', bottom=False, top=True, labelbottom=False, labeltop=True)
    plt.setp(ax.get_xticklabels(), rotation=45, ha='left', rotation_mode='anchor')
    for (row, col), value in np.ndenumerate(percent):
        text = '-' if np.isnan(value) else f'{int(value)}%'
        ax.text(col, row, text, ha='center', va='center', color='w', size=7)
    ax.set_ylim(num_classes - 0.5, -0.5)
    fig.tight_layout()
    if save_dir is not None:
        fig.savefig(osp.join(save_dir, 'confusion_matrix.png'), format='png')
    if show:
        plt.show()
    plt.close(fig)


def format_matrix(confusion_matrix: np.ndarray, labels: Sequence[str]) -> str:
    """The counts as a text table: a row per ground-truth class, a column per prediction."""
    width = max(max(map(len, labels)), len(str(confusion_matrix.max()))) + 2
    lines = ['confusion matrix (rows: ground truth, columns: prediction)',
             ' ' * width + ''.join(label.rjust(width) for label in labels)]
    lines += [label.rjust(width) + ''.join(str(count).rjust(width) for count in row)
              for label, row in zip(labels, confusion_matrix.tolist())]
    return '\n'.join(lines)


def load_predictions(path: str) -> list[dict]:
    """``DumpDetResults``' pickle -> its list of per-image dicts; ValueError for anything else."""
    try:
        results = load(path, file_format='pkl')
    except (pickle.UnpicklingError, EOFError) as err:
        raise ValueError(f'{path} is not a pickle file ({err})') from err
    if not isinstance(results, list) or not results:
        held = 'an empty list' if isinstance(results, list) else type(results).__name__
        raise ValueError(f'{path} holds {held} where a non-empty list of per-image results was '
                         'expected (the .pkl of tools/test.py --out)')
    for index, res in enumerate(results):
        pred = res.get('pred_instances') if isinstance(res, dict) else None
        if not isinstance(pred, Mapping) or not set(PRED_KEYS) <= set(pred):
            raise ValueError(f'{path}: result {index} is not a per-image dict with '
                             f'pred_instances holding {", ".join(PRED_KEYS)} (mmdetection 2.x '
                             'results, per-class arrays, are not read: run tools/test.py --out)')
    return results


def main() -> None:
    args = parse_args()
    for path, what in ((args.config, 'config file'), (args.prediction_path, 'predictions')):
        if not osp.isfile(path):
            sys.exit(f'confusion_matrix.py: error: {what} not found: {path}')
    if not args.show:
        matplotlib.use('Agg')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    try:
        results = load_predictions(args.prediction_path)
        with DefaultScope.overwrite_default_scope(cfg.get('default_scope') or 'rcnn_det'):
            dataset = DATASETS.build(cfg.test_dataloader.dataset)
        confusion_matrix = calculate_confusion_matrix(dataset, results, args.score_thr,
                                                      args.nms_iou_thr, args.tp_iou_thr)
    except ValueError as err:
        sys.exit(f'confusion_matrix.py: error: {err}')
    labels = tuple(dataset.metainfo['classes']) + ('background',)
    mkdir_or_exist(args.save_dir)
    with open(osp.join(args.save_dir, 'confusion_matrix.json'), 'w', encoding='utf-8') as f:
        json.dump(dict(classes=list(labels), matrix=confusion_matrix.tolist()), f)
    print(f'\n{format_matrix(confusion_matrix, labels)}')
    plot_confusion_matrix(confusion_matrix, labels, save_dir=args.save_dir, show=args.show,
                          color_theme=args.color_theme)
    print(f'confusion matrix saved to {osp.join(args.save_dir, "confusion_matrix.png")} '
          'and confusion_matrix.json')


if __name__ == '__main__':
    main()
