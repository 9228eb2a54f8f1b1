"""COCO evaluation (boxes and masks) with hotcoco or pycocotools, without torch.

``CocoMetric`` and ``tools/analysis_tools/coco_eval.py`` share ``evaluate``. The default
backend, hotcoco, is a Rust implementation of pycocotools' ``COCOeval`` that gives the same
12 numbers and the same precision array (bit for bit on the generated sets of the tests and
of ``tools/analysis_tools/benchmark_coco_eval.py``), 20-50 times faster; ``'pycocotools'``
runs pycocotools itself. Shape letters of the precision array: T IoU thresholds, R recall
thresholds (101), K categories, A area ranges (all, small, medium, large), M maxDets.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

EVAL_BACKENDS = ('hotcoco', 'pycocotools')
# hotcoco ships wheels for Python >= 3.10 only: on 3.9 pycocotools computes the same numbers
DEFAULT_BACKEND = 'hotcoco' if importlib.util.find_spec('hotcoco') else 'pycocotools'
DEFAULT_IOU_THRS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)


@dataclass
class CocoEvaluation:
    stats: np.ndarray       # (12,) COCOeval.stats
    precision: np.ndarray   # (T, R, K, A, M) COCOeval.eval['precision'], -1 where undefined
    summary: str            # COCOeval.summarize()'s 12 lines, as pycocotools prints them


def check_backend(backend: str, where: str = 'evaluate') -> None:
    if backend not in EVAL_BACKENDS:
        raise ValueError(f"{where}: backend must be one of {list(EVAL_BACKENDS)}, got "
                         f"'{backend}'")


def evaluate(gt, results: list[dict], iou_type: str = 'bbox', backend: str = DEFAULT_BACKEND,
             cat_ids: Sequence[int] | None = None, img_ids: Sequence | None = None,
             max_dets: Sequence[int] = (1, 10, 100), iou_thrs: Sequence[float] | None = None,
             use_cats: bool = True) -> CocoEvaluation:
    """``COCOeval(gt, gt.loadRes(results), iou_type)`` with these params, evaluated,
    accumulated and summarised, silently.

    Args:
        gt: the ground truth as a COCO json dict, or (pycocotools backend) a pycocotools
            ``COCO``; hotcoco reads the dict (``COCO.dataset``).
        results: COCO result dicts (image_id, category_id, score, bbox or segmentation); not
            empty (pycocotools' ``loadRes`` fails on an empty list).
        cat_ids, img_ids: None: every category and image of ``gt``.
    """
    check_backend(backend)
    if iou_type not in ('bbox', 'segm'):
        raise ValueError(f"evaluate: iou_type must be 'bbox' or 'segm', got '{iou_type}'")
    if backend == 'hotcoco':
        import hotcoco
        from pycocotools.coco import COCO
        gt_api = hotcoco.COCO(gt.dataset if isinstance(gt, COCO) else gt)
        api_eval = hotcoco.COCOeval
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as api_eval
        if isinstance(gt, COCO):
            gt_api = gt
        else:
            gt_api = COCO()
            gt_api.dataset = gt
            with contextlib.redirect_stdout(io.StringIO()):
                gt_api.createIndex()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # hotcoco warns that the AR lines use the given maxDets, which is what is asked
        warnings.filterwarnings('ignore', message='hotcoco: max_dets differ')
        # loadRes writes into the dicts it is given (area, id, a box polygon): copies
        coco_eval = api_eval(gt_api, gt_api.loadRes([dict(r) for r in results]), iou_type)
        params = coco_eval.params
        params.catIds = list(cat_ids) if cat_ids is not None else sorted(gt_api.getCatIds())
        params.imgIds = list(img_ids) if img_ids is not None else sorted(gt_api.getImgIds())
        params.maxDets = [int(m) for m in max_dets]
        thresholds = DEFAULT_IOU_THRS if iou_thrs is None else np.atleast_1d(iou_thrs)
        params.iouThrs = ([float(t) for t in thresholds] if backend == 'hotcoco'
                          else np.asarray(thresholds, dtype=np.float64))
        params.useCats = bool(use_cats) if backend == 'hotcoco' else int(use_cats)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    stats = np.asarray(coco_eval.stats, dtype=np.float64)
    return CocoEvaluation(stats=stats,
                          precision=np.asarray(coco_eval.eval['precision'], dtype=np.float64),
                          summary=pycocotools_summary(stats, thresholds, params.maxDets))


# COCOeval.summarize()'s 12 lines: (AP?, IoU threshold or None for all, area, maxDets index;
# None: the first line's literal maxDets=100, whatever params.maxDets holds)
SUMMARY_LINES = [(True, None, 'all', None), (True, .5, 'all', 2), (True, .75, 'all', 2),
                 (True, None, 'small', 2), (True, None, 'medium', 2), (True, None, 'large', 2),
                 (False, None, 'all', 0), (False, None, 'all', 1), (False, None, 'all', 2),
                 (False, None, 'small', 2), (False, None, 'medium', 2), (False, None, 'large', 2)]


def pycocotools_summary(stats: np.ndarray, iou_thrs: Sequence[float],
                        max_dets: Sequence[int]) -> str:
    """The text pycocotools' ``COCOeval.summarize`` prints for these 12 stats (whichever
    backend computed them, logs read the same)."""
    lines = []
    for value, (ap, iou, area, dets) in zip(stats, SUMMARY_LINES):
        title, kind = ('Average Precision', '(AP)') if ap else ('Average Recall', '(AR)')
        iou_text = (f'{iou_thrs[0]:0.2f}:{iou_thrs[-1]:0.2f}' if iou is None
                    else f'{iou:0.2f}')
        lines.append(f' {title:<18} {kind} @[ IoU={iou_text:<9} | area={area:>6s} | '
                     f'maxDets={100 if dets is None else max_dets[dets]:>3d} ] = {value:0.3f}')
    return '\n'.join(lines)


def synthetic_case(num_images: int = 2000, dets_per_image: int = 100, num_classes: int = 10,
                   size: tuple[int, int] = (256, 256), seed: int = 0
                   ) -> tuple[dict, list[dict]]:
    """A generated COCO ground truth and results with both boxes and masks, for comparing
    evaluators: per image 0-11 objects of every area range (polygons: rectangles and 12-gons;
    8% crowd regions as RLE), and ``dets_per_image`` detections, half near an object (jittered,
    a fifth with a wrong class), half anywhere, each with its box as an RLE mask and a random
    score. Returns (gt json dict, result dicts with ``bbox`` and ``segmentation``)."""
    import pycocotools.mask as mask_util

    rng = np.random.default_rng(seed)
    height, width = size
    images, annotations, results = [], [], []
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    for image_id in range(1, num_images + 1):
        images.append(dict(id=image_id, width=width, height=height,
                           file_name=f'{image_id:06d}.png'))
        objects = []
        for _ in range(int(rng.integers(0, 12))):
            side = float(np.exp(rng.uniform(np.log(6), np.log(200))))
            w = min(side * rng.uniform(0.6, 1.4), width - 2)
            h = min(side * rng.uniform(0.6, 1.4), height - 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            category = int(rng.integers(1, num_classes + 1))
            crowd = int(rng.random() < 0.08)
            if crowd:
                segmentation = mask_util.frPyObjects(np.array([[x, y, w, h]]), height, width)[0]
                segmentation['counts'] = segmentation['counts'].decode()
            elif rng.random() < 0.5:
                segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            else:
                points = np.stack([x + w / 2 * (1 + np.cos(angles)),
                                   y + h / 2 * (1 + np.sin(angles))], 1)
                segmentation = [points.round(2).flatten().tolist()]
            rle = (segmentation if crowd else
                   mask_util.merge(mask_util.frPyObjects(segmentation, height, width)))
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id,
                                    category_id=category, bbox=[x, y, w, h],
                                    area=float(mask_util.area(rle)), iscrowd=crowd,
                                    segmentation=segmentation))
            objects.append((x, y, w, h, category))
        for _ in range(dets_per_image):
            if objects and rng.random() < 0.5:
                x, y, w, h, category = objects[int(rng.integers(0, len(objects)))]
                jitter = rng.normal(0, 0.15, 4) * np.array([w, h, w, h])
                x, y = x + jitter[0], y + jitter[1]
                w, h = max(w + jitter[2], 1), max(h + jitter[3], 1)
                if rng.random() < 0.2:
                    category = int(rng.integers(1, num_classes + 1))
            else:
                side = float(np.exp(rng.uniform(np.log(6), np.log(200))))
                w, h = side, side * rng.uniform(0.5, 2)
                x, y = rng.uniform(-10, width - 10), rng.uniform(-10, height - 10)
                category = int(rng.integers(1, num_classes + 1))
            x0, y0 = max(x, 0.0), max(y, 0.0)
            x1, y1 = min(x + w, width), min(y + h, height)
            if x1 - x0 < 1 or y1 - y0 < 1:
                x0, y0, x1, y1 = 0.0, 0.0, 4.0, 4.0
            box = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
            rle = mask_util.frPyObjects(np.array([box]), height, width)[0]
            rle['counts'] = rle['counts'].decode()
            results.append(dict(image_id=image_id, category_id=category, bbox=box,
                                score=float(rng.random()), segmentation=rle))
    categories = [dict(id=c, name=f'class{c}') for c in range(1, num_classes + 1)]
    return dict(images=images, annotations=annotations, categories=categories), results
