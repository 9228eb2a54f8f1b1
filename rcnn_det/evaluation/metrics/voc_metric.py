"""``VOCMetric``: Pascal VOC mAP, mmdetection 3.x's ``VOCMetric`` + ``eval_map`` semantics.

Shape letters: D detections of one image, G non-ignored (not difficult) ground-truth boxes,
I ignored (difficult) ones, S scale ranges (1 without ``scale_ranges``), C classes.

process() keeps, per image, small numpy arrays (mmengine pickles them across ranks):
    gt:   bboxes (G, 4), labels (G,), bboxes_ignore (I, 4), labels_ignore (I,)
    pred: bboxes (D, 4) xyxy px of the original image, scores (D,), labels (D,)
compute_metrics() -> {'mAP', 'AP50', ...}: per IoU threshold t, f'AP{int(t * 100):02d}' is the
mean over classes with ground truth of the class AP (rounded to 3 decimals, as mmdet); 'mAP'
is the mean of those (unrounded) over the thresholds. mmengine prefixes 'pascal_voc/'.

Matching (mmdet's ``tpfp_default`` with ``use_legacy_coordinate=True``, the VOC devkit's):
boxes are ``VOCDataset``'s 0-based corners, so widths are x2 - x1 + 1. Per image and class,
detections in descending score order take the gt (difficult ones included) of highest IoU; at
IoU >= t a detection is a TP if that gt is not difficult and not yet taken, FP if it is taken,
and neither TP nor FP if it is difficult. Below t it is an FP.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmengine.structures import BaseDataElement

from rcnn_det.evaluation.metrics.coco_metric import to_numpy
from rcnn_det.registry import METRICS

EVAL_MODES = ('area', '11points')
YEAR_EVAL_MODE = {'VOC2007': '11points', 'VOC2012': 'area'}  # the official protocol per year


def legacy_areas(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) inclusive-pixel xyxy boxes -> (N,) areas (x2 - x1 + 1) * (y2 - y1 + 1)."""
    return (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)


def legacy_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """(N, 4), (M, 4) -> (N, M) IoU in the legacy +1 convention (mmdet's bbox_overlaps)."""
    lt = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])              # (N, M, 2)
    rb = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = np.clip(rb - lt + 1, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = legacy_areas(boxes1)[:, None] + legacy_areas(boxes2)[None, :] - inter
    return inter / np.maximum(union, np.finfo(np.float32).eps)


def in_ranges(areas: np.ndarray, area_ranges: np.ndarray) -> np.ndarray:
    """(N,) areas, (S, 2) [min, max) area ranges -> (S, N) bool."""
    return (areas[None] >= area_ranges[:, :1]) & (areas[None] < area_ranges[:, 1:])


def tpfp_image(gt: dict, pred: dict, iou_thr: float,
               area_ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TP and FP flags (S, D) of one image's detections, all classes at once (module doc).

    A detection only matches gts of its own label: other labels' IoUs are set to -1.
    """
    gt_boxes = np.concatenate([gt['bboxes'], gt['bboxes_ignore']])          # (G + I, 4)
    gt_labels = np.concatenate([gt['labels'], gt['labels_ignore']])
    gt_ignored = np.arange(len(gt_boxes)) >= len(gt['bboxes'])
    num_dets = len(pred['scores'])
    order = np.argsort(-pred['scores'], kind='stable')
    ious = legacy_iou(pred['bboxes'][order], gt_boxes)                      # (D, G + I)
    ious[pred['labels'][order][:, None] != gt_labels[None, :]] = -1.0
    matched = ious.max(axis=1, initial=-1.0) >= iou_thr                     # (D,)
    gt_idx = ious.argmax(axis=1) if gt_boxes.size else np.zeros(num_dets, dtype=np.int64)
    # Out-of-range gts count as ignored; out-of-range unmatched detections are not FPs.
    gt_skip = gt_ignored[None] | ~in_ranges(legacy_areas(gt_boxes), area_ranges)   # (S, G+I)
    det_in_range = in_ranges(legacy_areas(pred['bboxes'][order]), area_ranges)     # (S, D)
    # Of the detections matching one gt, the first in score order is the TP, the rest FPs.
    first = np.zeros(num_dets, dtype=bool)
    first[np.unique(np.where(matched, gt_idx, -1), return_index=True)[1]] = True
    first &= matched
    counted = (matched[None] & ~gt_skip[:, gt_idx] if len(gt_boxes)           # (S, D)
               else np.zeros((len(area_ranges), num_dets), dtype=bool))
    tp = counted & first[None]
    fp = (counted & ~first[None]) | (~matched[None] & det_in_range)
    tp_out, fp_out = np.empty_like(tp), np.empty_like(fp)                   # back to input order
    tp_out[:, order], fp_out[:, order] = tp, fp
    return tp_out, fp_out


def average_precision(recalls: np.ndarray, precisions: np.ndarray, mode: str) -> float:
    """AP of one precision/recall curve ((R,) each, in detection order), mmdet's formulas.

    'area': area under the curve made monotone (precision at r = max precision at recall >= r),
    VOC2010+. '11points': mean over r in {0, 0.1, ..., 1} of the max precision at recall >= r,
    VOC2007.
    """
    if mode == 'area':
        mrec = np.concatenate([[0.0], recalls, [1.0]])
        mpre = np.maximum.accumulate(np.concatenate([[0.0], precisions, [0.0]])[::-1])[::-1]
        steps = np.flatnonzero(mrec[1:] != mrec[:-1])
        return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    points = np.arange(0, 1 + 1e-3, 0.1)                                    # (11,)
    reached = recalls[None, :] >= points[:, None]                           # (11, R)
    return float(np.where(reached, precisions[None, :], 0.0).max(axis=1, initial=0.0).mean())


def eval_map(gts: Sequence[dict], preds: Sequence[dict], num_classes: int, iou_thr: float,
             area_ranges: np.ndarray, mode: str) -> tuple[np.ndarray, list[dict]]:
    """mmdet's ``eval_map`` -> (mAP per scale range (S,), per-class dicts of (S,) arrays with
    num_gts, num_dets, recall (final recall) and ap). The mean is over classes with gts."""
    flags = [tpfp_image(gt, pred, iou_thr, area_ranges) for gt, pred in zip(gts, preds)]
    tp, fp = (np.concatenate([f[i] for f in flags], axis=1) for i in (0, 1))   # (S, all D)
    scores = np.concatenate([pred['scores'] for pred in preds])
    labels = np.concatenate([pred['labels'] for pred in preds])
    gt_labels = np.concatenate([gt['labels'] for gt in gts])
    gt_in_range = in_ranges(legacy_areas(np.concatenate([gt['bboxes'] for gt in gts])),
                            area_ranges)                                    # (S, all G)
    eps = np.finfo(np.float32).eps
    results = []
    for c in range(num_classes):
        mine = np.flatnonzero(labels == c)
        order = mine[np.argsort(-scores[mine], kind='stable')]
        tp_c, fp_c = np.cumsum(tp[:, order], axis=1), np.cumsum(fp[:, order], axis=1)
        num_gts = gt_in_range[:, gt_labels == c].sum(axis=1)                # (S,)
        recalls = tp_c / np.maximum(num_gts, eps)[:, None]
        precisions = tp_c / np.maximum(tp_c + fp_c, eps)
        results.append(dict(
            num_gts=num_gts, num_dets=len(order),
            recall=recalls[:, -1] if len(order) else np.zeros(len(area_ranges)),
            ap=np.array([average_precision(r, p, mode) for r, p in zip(recalls, precisions)])))
    aps = np.stack([r['ap'] for r in results], axis=1)                      # (S, C)
    has_gt = np.stack([r['num_gts'] for r in results], axis=1) > 0
    mean_ap = np.where(has_gt.any(1), (aps * has_gt).sum(1) / np.maximum(has_gt.sum(1), 1), 0.0)
    return mean_ap, results


def map_table(results: list[dict], mean_ap: float, classes: Sequence[str], scale: int) -> str:
    """mmdet's print_map_summary table for scale range ``scale``: class, gts, dets, recall, ap."""
    rows = [('class', 'gts', 'dets', 'recall', 'ap')]
    rows += [(name, str(r['num_gts'][scale]), str(r['num_dets']), f"{r['recall'][scale]:.3f}",
              f"{r['ap'][scale]:.3f}") for name, r in zip(classes, results)]
    rows.append(('mAP', '', '', '', f'{mean_ap:.3f}'))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [' | '.join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    rule = '-+-'.join('-' * w for w in widths)
    return '\n'.join([rule, lines[0], rule, *lines[1:-1], rule, lines[-1], rule])


@METRICS.register_module()
class VOCMetric(BaseMetric):
    """Pascal VOC box mAP of the model's ``pred_instances`` (see the module doc).

    Args (mmdetection 3.x's):
        iou_thrs: one IoU threshold or a list; each gives an 'AP{t*100}' key.
        scale_ranges: [(min, max), ...] box scales (sqrt of the legacy area) to evaluate apart;
            the keys then become f'AP{t*100}_{min}-{max}' per range (mmdet fails here: its
            VOCMetric rounds the list of per-range mAPs) and 'mAP' averages all of them.
        metric: 'mAP' (or ['mAP']); mmdet's unfinished 'recall' is refused.
        proposal_nums: accepted for config compatibility; used only by 'recall'.
        eval_mode: '11points' (VOC2007, mmdet's default) or 'area' (VOC2010+).
        collect_device, prefix: mmengine's BaseMetric arguments; default prefix 'pascal_voc'.

    Ground truth is each sample's ``gt_instances`` / ``ignored_instances`` (original pixels:
    the test pipeline must load annotations after ``Resize``, as mmdet's VOC config does), or,
    without them, the dataset's raw ``instances`` when PackDetInputs' meta_keys carry them.
    """
    default_prefix: str | None = 'pascal_voc'

    def __init__(self, iou_thrs: float | Sequence[float] = 0.5,
                 scale_ranges: Sequence[tuple[float, float]] | None = None,
                 metric: str | Sequence[str] = 'mAP',
                 proposal_nums: Sequence[int] = (100, 300, 1000), eval_mode: str = '11points',
                 collect_device: str = 'cpu', prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.iou_thrs = [float(t) for t in np.atleast_1d(iou_thrs)]
        self.scale_ranges = None if scale_ranges is None else [tuple(r) for r in scale_ranges]
        if not isinstance(metric, str):
            if len(metric) != 1:
                raise KeyError(f'VOCMetric: evaluates one metric, got {list(metric)}')
            metric = metric[0]
        if metric != 'mAP':
            raise KeyError(f"VOCMetric: metric must be 'mAP', got '{metric}' ('recall', "
                           "unfinished in mmdet 3.x, is not supported: use CocoMetric's "
                           "'proposal')")
        if eval_mode not in EVAL_MODES:
            raise ValueError(f'VOCMetric: eval_mode must be one of {EVAL_MODES}, '
                             f"got '{eval_mode}'")
        self.metric, self.proposal_nums, self.eval_mode = metric, list(proposal_nums), eval_mode

    def process(self, data_batch: dict | None, data_samples: Sequence[dict]) -> None:
        """Keep each sample's ground truth and predictions as numpy arrays (module doc)."""
        for sample in data_samples:
            if isinstance(sample, BaseDataElement):
                sample = sample.to_dict()
            pred = sample['pred_instances']
            self.results.append((self._ground_truth(sample), dict(
                bboxes=to_numpy(pred['bboxes'], np.float32).reshape(-1, 4),
                scores=to_numpy(pred['scores'], np.float32),
                labels=to_numpy(pred['labels'], np.int64))))

    @staticmethod
    def _ground_truth(sample: dict) -> dict:
        gt_instances = sample.get('gt_instances', {})
        if 'bboxes' in gt_instances:
            ignored = sample.get('ignored_instances', {})
            return dict(bboxes=to_numpy(gt_instances['bboxes'], np.float32).reshape(-1, 4),
                        labels=to_numpy(gt_instances['labels'], np.int64),
                        bboxes_ignore=to_numpy(ignored.get('bboxes', np.zeros((0, 4))),
                                               np.float32).reshape(-1, 4),
                        labels_ignore=to_numpy(ignored.get('labels', []), np.int64))
        if 'instances' not in sample:
            raise KeyError('VOCMetric: a data sample has neither gt_instances.bboxes (add '
                           "LoadAnnotations after Resize to the test pipeline) nor the dataset's "
                           "'instances' (add 'instances' to PackDetInputs' meta_keys).")
        insts = sample['instances']
        ignored = np.array([bool(inst.get('ignore_flag', 0)) for inst in insts], dtype=bool)
        boxes = np.array([inst['bbox'] for inst in insts], dtype=np.float32).reshape(-1, 4)
        labels = np.array([inst['bbox_label'] for inst in insts], dtype=np.int64)
        return dict(bboxes=boxes[~ignored], labels=labels[~ignored],
                    bboxes_ignore=boxes[ignored], labels_ignore=labels[ignored])

    def compute_metrics(self, results: list) -> dict[str, float]:
        """mAP per IoU threshold (and scale range), with a per-class table in the log."""
        if not results:
            return {}
        meta = self.dataset_meta or {}
        if 'classes' not in meta:
            raise ValueError('VOCMetric: dataset_meta["classes"] is needed (the evaluator sets '
                             "it from the dataset's metainfo).")
        year = meta.get('dataset_type')
        if year in YEAR_EVAL_MODE and self.eval_mode != YEAR_EVAL_MODE[year]:
            print_log(f'Pascal {year} uses `{YEAR_EVAL_MODE[year]}` as default evaluate mode, '
                      f'but you are using `{self.eval_mode}`.', logger='current',
                      level=logging.WARNING)
        classes = meta['classes']
        # mmdet: without scale_ranges every box counts, even a degenerate one (area <= 0).
        ranges = self.scale_ranges or [(-np.inf, np.inf)]
        area_ranges = np.array([(np.sign(lo) * lo ** 2, hi ** 2) for lo, hi in ranges])
        gts, preds = zip(*results)
        eval_results: dict[str, float] = {}
        mean_aps = []
        for thr in self.iou_thrs:
            mean_ap, per_class = eval_map(gts, preds, len(classes), thr, area_ranges,
                                          self.eval_mode)
            for s, (lo, hi) in enumerate(ranges):
                where = '' if self.scale_ranges is None else f'_{lo:g}-{hi:g}'
                print_log(f'\n{"-" * 15}iou_thr: {thr}{where}{"-" * 15}\n'
                          + map_table(per_class, mean_ap[s], classes, s), logger='current')
                eval_results[f'AP{int(thr * 100):02d}{where}'] = round(float(mean_ap[s]), 3)
            mean_aps.extend(mean_ap.tolist())
        return {'mAP': float(np.mean(mean_aps)), **eval_results}
