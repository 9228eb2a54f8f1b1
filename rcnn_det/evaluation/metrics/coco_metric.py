"""``CocoMetric``: COCO box / mask / proposal evaluation, mmdetection's names; pycocotools'
numbers computed by hotcoco (or pycocotools itself, ``backend='pycocotools'``).

Shape letters: D detections of one image, C classes of the dataset, H x W the original image.

process() keeps, per image, only small CPU data (mmengine pickles it across ranks):
    result: img_id, bboxes (D, 4) float32 xyxy px of the ORIGINAL image, scores (D,) float32,
            labels (D,) int64 in [0, C), masks: D RLE dicts (str counts) when predicted
    gt:     img_id, width, height, and the dataset's raw ``instances`` when there is no ann_file
compute_metrics() -> {'bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m',
'bbox_mAP_l'} (and 'segm_*'); mmengine prefixes the keys with 'coco/'. Values are COCOeval's
stats rounded to 3 decimals; -1 where COCO has no ground truth (e.g. no small objects).
classwise adds '{class name}_precision' (AP of the class, NaN without ground truth) per class,
without the metric in the key, as mmdet 3.x: with 'bbox' and 'segm' the later one's values win.
When a metric has no detection in the whole test set, mmdet logs an error and stops evaluating
(that metric and the ones after it); so does this metric: their keys are then absent.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os.path as osp
from collections.abc import Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from mmengine.evaluator import BaseMetric
from mmengine.fileio import dump, get_local_path
from mmengine.logging import print_log
from mmengine.structures import BaseDataElement
from pycocotools.coco import COCO

from rcnn_det.cocoeval import DEFAULT_BACKEND, check_backend, evaluate
from rcnn_det.datasets.coco import select_categories
from rcnn_det.registry import METRICS

# Index of each named number in COCOeval.stats, with mmdet's names. mmdet sets maxDets =
# proposal_nums (100, 300, 1000); pycocotools then computes mAP at maxDets=100 (a literal in
# its summarize) and mAP_50 ... mAP_l and the AR_s/m/l at maxDets[2] = 1000. Kept for parity.
COCO_STAT_INDEX = {
    'mAP': 0, 'mAP_50': 1, 'mAP_75': 2, 'mAP_s': 3, 'mAP_m': 4, 'mAP_l': 5,
    'AR@100': 6, 'AR@300': 7, 'AR@1000': 8, 'AR_s@1000': 9, 'AR_m@1000': 10, 'AR_l@1000': 11,
}
AP_ITEMS = ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')
AR_ITEMS = ('AR@100', 'AR@300', 'AR@1000', 'AR_s@1000', 'AR_m@1000', 'AR_l@1000')
ALLOWED_METRICS = ('bbox', 'segm', 'proposal')
EMPTY_RESULTS_MESSAGE = 'The testing results of the whole dataset is empty.'  # mmdet's words


def quiet_coco(dataset: dict) -> COCO:
    """A pycocotools ``COCO`` built from an in-memory json dict, without its progress prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def to_numpy(x: torch.Tensor | np.ndarray, dtype: type) -> np.ndarray:
    """A CPU numpy copy of ``x`` (a CUDA tensor must not reach the cross-rank pickles)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to('cpu')
        x = x.float() if dtype == np.float32 else x
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def encode_masks(masks: torch.Tensor | np.ndarray) -> list[dict]:
    """(D, H, W) bool masks -> D COCO RLE dicts with ``str`` counts (json- and pickle-ready)."""
    masks = to_numpy(masks, np.uint8)
    if len(masks) == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))  # wants (H, W, D)
    for rle in rles:
        rle['counts'] = rle['counts'].decode()
    return rles


def label_to_cat_ids(coco: COCO, classes: Sequence[str] | None, where: str) -> list[int]:
    """Category id of each label, by the dataset's rule (``CocoDataset``'s select_categories):
    label i is the category named ``classes[i]``; without ``classes`` (no dataset_meta), the
    json's categories sorted by id."""
    return select_categories(coco.dataset.get('categories', []), classes, where)[1]


def results_to_coco_json(preds: Sequence[dict],
                         cat_ids: Sequence[int]) -> tuple[list[dict], list[dict] | None]:
    """Per-image results -> COCO result lists (bbox; segm when masks were predicted).

    Boxes become xywh px; label i becomes ``cat_ids[i]``. segm is None when no image has masks.
    """
    has_masks = any('masks' in pred for pred in preds)
    bbox_json, segm_json = [], ([] if has_masks else None)
    for pred in preds:
        labels = pred['labels']
        if len(labels) and (labels.min() < 0 or labels.max() >= len(cat_ids)):
            raise ValueError(f'CocoMetric: image {pred["img_id"]} has labels outside '
                             f'[0, {len(cat_ids)}): {np.unique(labels).tolist()}')
        xywh = pred['bboxes'].copy()                                # (D, 4) xyxy -> xywh
        xywh[:, 2:] -= xywh[:, :2]
        category_ids = np.asarray(cat_ids, dtype=np.int64)[labels].tolist()
        boxes, scores = xywh.tolist(), pred['scores'].tolist()
        bbox_json += [dict(image_id=pred['img_id'], bbox=box, score=score, category_id=cat)
                      for box, score, cat in zip(boxes, scores, category_ids)]
        if segm_json is not None and 'masks' in pred:
            mask_scores = pred.get('mask_scores', pred['scores']).tolist()
            segm_json += [dict(image_id=pred['img_id'], bbox=box, score=score, category_id=cat,
                               segmentation=rle)
                          for box, score, cat, rle in
                          zip(boxes, mask_scores, category_ids, pred['masks'])]
    return bbox_json, segm_json


def gt_to_coco_dataset(gts: Sequence[dict], classes: Sequence[str]) -> dict:
    """A COCO gt json dict from the samples' raw dataset ``instances`` (mmdet's gt_to_coco_json).

    Category id = label index; crowd = ``ignore_flag``; area = box area (as mmdet).
    """
    images, annotations = [], []
    for gt in gts:
        images.append(dict(id=gt['img_id'], width=gt['width'], height=gt['height'],
                           file_name=''))
        for ann in gt['anns']:
            x1, y1, x2, y2 = (float(v) for v in ann['bbox'])
            annotation = dict(id=len(annotations) + 1,  # pycocotools wants ids from 1
                              image_id=gt['img_id'], bbox=[x1, y1, x2 - x1, y2 - y1],
                              iscrowd=int(ann.get('ignore_flag', 0)),
                              category_id=int(ann['bbox_label']), area=(x2 - x1) * (y2 - y1))
            if ann.get('mask') is not None:
                mask = ann['mask']
                if isinstance(mask, dict) and isinstance(mask['counts'], bytes):
                    mask = dict(mask, counts=mask['counts'].decode())
                annotation['segmentation'] = mask
            annotations.append(annotation)
    categories = [dict(id=i, name=name) for i, name in enumerate(classes)]
    return dict(images=images, annotations=annotations, categories=categories)


def class_ap_table(precisions: np.ndarray, iou_thrs: np.ndarray,
                   names: Sequence[str]) -> list[tuple[str, list[float]]]:
    """Per-class [mAP, mAP_50, mAP_75, mAP_s, mAP_m, mAP_l] at the largest maxDets.

    precisions: (T, R, K, A, M) COCOeval.eval['precision'], -1 where undefined; NaN is reported
    for a class whose value is undefined everywhere (no ground truth in that range).
    """
    def mean_defined(p: np.ndarray) -> float:
        p = p[p > -1]
        return float(np.mean(p)) if p.size else float('nan')

    t50 = np.flatnonzero(np.isclose(iou_thrs, 0.5))
    t75 = np.flatnonzero(np.isclose(iou_thrs, 0.75))
    rows = []
    for k, name in enumerate(names):
        p = precisions[:, :, k, :, -1]                              # (T, R, A)
        values = [mean_defined(p[:, :, 0]), mean_defined(p[t50, :, 0]),
                  mean_defined(p[t75, :, 0])] + [mean_defined(p[:, :, a]) for a in (1, 2, 3)]
        rows.append((name, values))
    return rows


@METRICS.register_module()
class CocoMetric(BaseMetric):
    """COCO mAP of the model's ``pred_instances`` (pycocotools' COCOeval numbers).

    Args (mmdetection 3.x's):
        ann_file: COCO gt json. None: built from each sample's raw ``instances`` (the dataset
            must put them in the data sample) with category id = label.
        metric: 'bbox', 'segm', 'proposal' (class-agnostic AR) or a list of them.
        classwise: also log a per-class AP table and return ``{class}_precision`` (mmdet's
            key: no metric in it, so 'segm' overwrites 'bbox').
        proposal_nums: COCOeval maxDets (AP uses the third, as mmdet).
        iou_thrs: IoU thresholds; None = 0.50:0.05:0.95.
        metric_items: names of COCO_STAT_INDEX to return; None = the six AP (AR for proposal).
        format_only: write ``{outfile_prefix}.bbox.json`` (and ``.segm.json``), return {}.
        outfile_prefix: where result jsons go ("a/b/prefix"); None = nowhere (unless format_only).
        backend_args: mmengine file backend arguments used to read ``ann_file``.
        collect_device, prefix: mmengine's BaseMetric arguments; default prefix 'coco'.
        sort_categories: sort the gt json's categories by id (mmdet's Objects365 fix).
        backend: 'hotcoco' (default; the same numbers as pycocotools, many times faster;
            on Python 3.9, which hotcoco has no wheel for, 'pycocotools') or 'pycocotools'
            (``rcnn_det.cocoeval``).
    """
    default_prefix: str | None = 'coco'

    def __init__(self, ann_file: str | None = None, metric: str | list[str] = 'bbox',
                 classwise: bool = False, proposal_nums: Sequence[int] = (100, 300, 1000),
                 iou_thrs: float | Sequence[float] | None = None,
                 metric_items: Sequence[str] | None = None, format_only: bool = False,
                 outfile_prefix: str | None = None, backend_args: dict | None = None,
                 collect_device: str = 'cpu', prefix: str | None = None,
                 sort_categories: bool = False, backend: str = DEFAULT_BACKEND) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        check_backend(backend, 'CocoMetric')
        self.backend = backend
        self.metrics = list(metric) if isinstance(metric, (list, tuple)) else [metric]
        for name in self.metrics:
            if name not in ALLOWED_METRICS:
                raise KeyError(f'CocoMetric: metric must be one of {ALLOWED_METRICS}, got '
                               f"'{name}' ('proposal_fast' is not supported).")
        for item in metric_items or ():
            if item not in COCO_STAT_INDEX:
                raise KeyError(f"CocoMetric: metric item '{item}' is not one of "
                               f'{list(COCO_STAT_INDEX)}.')
        if format_only and outfile_prefix is None:
            raise ValueError('CocoMetric: format_only=True needs outfile_prefix, the prefix of '
                             'the result json files to write.')
        self.classwise = classwise
        self.proposal_nums = list(proposal_nums)
        if iou_thrs is None:
            iou_thrs = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
        self.iou_thrs = np.atleast_1d(np.asarray(iou_thrs, dtype=np.float64))
        self.metric_items = list(metric_items) if metric_items is not None else None
        self.format_only = format_only
        self.outfile_prefix = outfile_prefix
        self.backend_args = backend_args
        self.ann_file = ann_file
        self._coco_api = None
        if ann_file is not None:
            with get_local_path(ann_file, backend_args=backend_args) as local_path, \
                    contextlib.redirect_stdout(io.StringIO()):
                self._coco_api = COCO(local_path)
            if sort_categories:
                coco = self._coco_api
                coco.cats = {i: coco.cats[i] for i in sorted(coco.cats)}
                coco.dataset['categories'] = sorted(coco.dataset['categories'],
                                                    key=lambda cat: cat['id'])

    def process(self, data_batch: dict | None, data_samples: Sequence[dict]) -> None:
        """Keep the predictions of a batch as small numpy arrays / RLEs (see module doc).

        data_samples: DetDataSample.to_dict() results (or DetDataSamples) with img_id,
            ori_shape (H, W) and pred_instances (bboxes, scores, labels, optional masks).
        """
        for sample in data_samples:
            if isinstance(sample, BaseDataElement):
                sample = sample.to_dict()
            if 'img_id' not in sample:
                raise KeyError('CocoMetric: a data sample has no img_id; the dataset must put '
                               "the COCO image id in each sample's metainfo.")
            pred = sample['pred_instances']
            result = dict(img_id=sample['img_id'],
                          bboxes=to_numpy(pred['bboxes'], np.float32).reshape(-1, 4),
                          scores=to_numpy(pred['scores'], np.float32),
                          labels=to_numpy(pred['labels'], np.int64))
            if 'masks' in pred:  # RLE now: a full-resolution mask per detection is too big
                masks = pred['masks']
                result['masks'] = (masks if isinstance(masks, list) else encode_masks(masks))
            if 'mask_scores' in pred:
                result['mask_scores'] = to_numpy(pred['mask_scores'], np.float32)
            gt = dict(img_id=sample['img_id'], height=int(sample['ori_shape'][0]),
                      width=int(sample['ori_shape'][1]))
            if self._coco_api is None:
                if 'instances' not in sample:
                    raise KeyError("CocoMetric: without ann_file the ground truth is read "
                                   "from each data sample's 'instances' (add 'instances' to "
                                   "PackDetInputs' meta_keys), or set ann_file to the COCO "
                                   'json of the evaluated images.')
                gt['anns'] = sample['instances']
            self.results.append((gt, result))

    def compute_metrics(self, results: list) -> dict[str, float]:
        """COCOeval every metric over all processed images (see module doc for the keys)."""
        if not results:
            return {}
        gts, preds = zip(*results)
        classes = (self.dataset_meta or {}).get('classes')
        if self._coco_api is not None:
            coco_gt, where = self._coco_api, f"ann_file '{self.ann_file}'"
        elif classes is None:
            raise ValueError('CocoMetric: without ann_file, dataset_meta["classes"] is needed '
                             'to build the COCO ground truth.')
        else:
            coco_gt, where = quiet_coco(gt_to_coco_dataset(gts, classes)), 'the samples'
        cat_ids = label_to_cat_ids(coco_gt, classes, where)
        img_ids = coco_gt.getImgIds()
        unknown = sorted({pred['img_id'] for pred in preds} - set(img_ids), key=str)
        if unknown:
            raise KeyError(f'CocoMetric: image ids {unknown[:10]} are not images of {where}.')
        result_jsons = dict(zip(('bbox', 'segm'), results_to_coco_json(preds, cat_ids)))
        result_jsons['proposal'] = result_jsons['bbox']
        if self.outfile_prefix is not None:
            self._dump(result_jsons)
        if self.format_only:
            return {}
        eval_results: dict[str, float] = {}
        for i, metric in enumerate(self.metrics):
            if result_jsons[metric] is None:
                raise KeyError(f"CocoMetric: metric '{metric}' needs pred_instances.masks, "
                               'which the model did not predict.')
            if not result_jsons[metric]:
                # mmdet (CocoMetric.compute_metrics) catches loadRes' IndexError on an empty
                # list, logs this error and breaks: no number for this metric or the later ones.
                print_log(f'{EMPTY_RESULTS_MESSAGE} CocoMetric: no {metric} detection in '
                          f'{len(preds)} images; not evaluated: {self.metrics[i:]}.',
                          logger='current', level=logging.ERROR)
                break
            eval_results.update(self._evaluate(metric, coco_gt, result_jsons[metric], cat_ids,
                                               img_ids))
        return eval_results

    def _dump(self, result_jsons: dict) -> None:
        for kind in ('bbox', 'segm'):
            if result_jsons[kind] is not None:
                path = f'{self.outfile_prefix}.{kind}.json'
                dump(result_jsons[kind], path)
                print_log(f'CocoMetric: {kind} results written to {osp.abspath(path)}',
                          logger='current')

    def _evaluate(self, metric: str, coco_gt: COCO, anns: list[dict], cat_ids: list[int],
                  img_ids: list) -> dict[str, float]:
        """COCOeval one metric; log its 12-number summary; return its named stats."""
        print_log(f'Evaluating {metric}...', logger='current')
        iou_type = 'bbox' if metric == 'proposal' else metric
        if iou_type == 'segm':
            # With a 'bbox' in the results, loadRes takes the box area as the instance area,
            # which moves detections between small/medium/large. mmdet drops it too.
            anns = [{k: v for k, v in ann.items() if k != 'bbox'} for ann in anns]
        coco_eval = evaluate(coco_gt, anns, iou_type, self.backend, cat_ids, img_ids,
                             self.proposal_nums, self.iou_thrs, use_cats=metric != 'proposal')
        print_log('\n' + coco_eval.summary, logger='current')

        items = self.metric_items or (AR_ITEMS if metric == 'proposal' else AP_ITEMS)
        key_prefix = '' if metric == 'proposal' else f'{metric}_'
        out = {f'{key_prefix}{item}': round(float(coco_eval.stats[COCO_STAT_INDEX[item]]), 3)
               for item in items}
        if metric != 'proposal':
            ap = coco_eval.stats[:6]
            print_log(f'{metric}_mAP_copypaste: ' + ' '.join(f'{v:.3f}' for v in ap),
                      logger='current')
        if self.classwise and metric != 'proposal':
            names = [coco_gt.cats[cat_id]['name'] for cat_id in cat_ids]
            rows = class_ap_table(coco_eval.precision, self.iou_thrs, names)
            header = f'{"category":<20}' + ''.join(f'{h:>9}' for h in AP_ITEMS)
            lines = [f'{name[:20]:<20}' + ''.join(f'{v:>9.3f}' for v in values)
                     for name, values in rows]
            print_log('\n' + '\n'.join([header] + lines), logger='current')
            out.update({f'{name}_precision': round(values[0], 3) for name, values in rows})
        return out
