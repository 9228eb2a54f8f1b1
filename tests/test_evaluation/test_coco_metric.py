"""CocoMetric on a tiny hand-written COCO json: hand-checkable APs, label -> category mapping,
result files, empty predictions, masks, and ground truth built from the samples."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData
from pycocotools.coco import COCO

from rcnn_det.evaluation import CocoMetric
from rcnn_det.structures.det_data_sample import DetDataSample

# The json lists its categories in another order than the dataset's classes, with
# non-contiguous ids: label 0 ('cat') must become id 3, label 1 ('dog') id 7, 'bird' (no gt) 12.
CLASSES = ('cat', 'dog', 'bird')
CAT_BOX = [10, 10, 110, 110]      # xyxy, area 10000: 'large' (> 96^2)
DOG_BOX = [20, 30, 70, 90]        # xyxy, area 3000: 'medium'


def box_polygon(box: list[float]) -> list[list[float]]:
    x1, y1, x2, y2 = box
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def coco_annotation(ann_id: int, img_id: int, cat_id: int, box: list[float]) -> dict:
    x1, y1, x2, y2 = box
    return dict(id=ann_id, image_id=img_id, category_id=cat_id, iscrowd=0,
                bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1),
                segmentation=box_polygon(box))


@pytest.fixture
def ann_file(tmp_path) -> str:
    gt = dict(images=[dict(id=1, width=200, height=150, file_name='1.jpg'),
                      dict(id=2, width=200, height=150, file_name='2.jpg')],
              categories=[dict(id=7, name='dog'), dict(id=3, name='cat'),
                          dict(id=12, name='bird')],
              annotations=[coco_annotation(1, 1, 3, CAT_BOX), coco_annotation(2, 2, 7, DOG_BOX)])
    path = tmp_path / 'gt.json'
    path.write_text(json.dumps(gt))
    return str(path)


def sample(img_id: int, boxes: list, labels: list, scores: list | None = None,
           masks: torch.Tensor | None = None) -> dict:
    """A DetDataSample as mmengine's Evaluator hands it to a metric (to_dict())."""
    pred = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        labels=torch.tensor(labels, dtype=torch.long),
                        scores=torch.tensor(scores or [0.9] * len(labels)))
    if masks is not None:
        pred.masks = masks
    data_sample = DetDataSample(metainfo=dict(img_id=img_id, ori_shape=(150, 200)))
    data_sample.pred_instances = pred
    return data_sample.to_dict()


def box_mask(box: list[float]) -> torch.Tensor:
    x1, y1, x2, y2 = box
    mask = torch.zeros(150, 200, dtype=torch.bool)
    mask[y1:y2, x1:x2] = True
    return mask


def evaluate(metric: CocoMetric, samples: list[dict]) -> dict:
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process({}, samples)
    return metric.evaluate(len(samples))


def test_perfect_predictions_give_map_one(ann_file):
    results = evaluate(CocoMetric(ann_file=ann_file),
                       [sample(1, [CAT_BOX], [0]), sample(2, [DOG_BOX], [1])])
    assert results['coco/bbox_mAP'] == 1.0
    assert results['coco/bbox_mAP_50'] == 1.0
    assert results['coco/bbox_mAP_75'] == 1.0
    assert results['coco/bbox_mAP_s'] == -1.0  # no small ground truth: COCO's -1, reported as is
    assert results['coco/bbox_mAP_m'] == 1.0
    assert results['coco/bbox_mAP_l'] == 1.0
    assert set(results) == {f'coco/bbox_{k}' for k in
                            ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')}


def test_shifted_box_gives_hand_computed_ap(ann_file):
    # IoU with the cat = 100 * 58 / (100 * 100) = 0.58: a hit at IoU 0.50 and 0.55 only, so the
    # cat's AP = 2 / 10; the dog is perfect (1.0); the bird has no gt and is left out: mean 0.6.
    shifted = [10, 10, 110, 68]
    results = evaluate(CocoMetric(ann_file=ann_file, classwise=True),
                       [sample(1, [shifted], [0]), sample(2, [DOG_BOX], [1])])
    assert results['coco/bbox_mAP'] == pytest.approx(0.6)
    assert results['coco/bbox_mAP_50'] == 1.0
    assert results['coco/bbox_mAP_75'] == 0.5
    assert results['coco/bbox_mAP_l'] == pytest.approx(0.2)   # the cat is the only large object
    # mmdet 3.x's per-class keys: f'{class name}_precision', the metric is not in them.
    assert results['coco/cat_precision'] == pytest.approx(0.2)
    assert results['coco/dog_precision'] == 1.0
    assert np.isnan(results['coco/bird_precision'])
    assert set(results) == ({f'coco/bbox_{k}' for k in
                             ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')}
                            | {f'coco/{name}_precision' for name in CLASSES})


def test_classwise_keys_are_shared_by_bbox_and_segm(ann_file):
    # The segm masks are perfect, the cat's box is shifted (box AP 0.2): segm, evaluated after
    # bbox, writes the same per-class keys last, as in mmdet.
    shifted = [10, 10, 110, 68]
    metric = CocoMetric(ann_file=ann_file, metric=['bbox', 'segm'], classwise=True)
    results = evaluate(metric, [sample(1, [shifted], [0], masks=box_mask(CAT_BOX)[None]),
                                sample(2, [DOG_BOX], [1], masks=box_mask(DOG_BOX)[None])])
    assert results['coco/bbox_mAP'] == pytest.approx(0.6)
    assert results['coco/segm_mAP'] == 1.0
    assert results['coco/cat_precision'] == 1.0 and results['coco/dog_precision'] == 1.0
    assert not any(key.startswith(('coco/bbox_cat', 'coco/segm_cat')) for key in results)


def test_labels_map_to_category_ids_by_class_name(ann_file, tmp_path):
    prefix = str(tmp_path / 'out' / 'res')
    results = evaluate(CocoMetric(ann_file=ann_file, format_only=True, outfile_prefix=prefix),
                       [sample(1, [CAT_BOX], [0]), sample(2, [DOG_BOX, CAT_BOX], [1, 2])])
    assert results == {}
    written = json.loads((tmp_path / 'out' / 'res.bbox.json').read_text())
    assert [(r['image_id'], r['category_id']) for r in written] == [(1, 3), (2, 7), (2, 12)]
    assert written[0]['bbox'] == [10.0, 10.0, 100.0, 100.0]  # xywh
    # pycocotools accepts the file as results of the gt json.
    dt = COCO(ann_file).loadRes(str(tmp_path / 'out' / 'res.bbox.json'))
    assert len(dt.getAnnIds()) == 3


def capture_logs(level: int = logging.INFO) -> tuple[list, logging.Handler]:
    """(records, handler) with the handler attached to mmengine's current logger."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level)
    handler.emit = records.append
    MMLogger.get_current_instance().addHandler(handler)
    return records, handler


def test_images_without_predictions(ann_file):
    results = evaluate(CocoMetric(ann_file=ann_file),
                       [sample(1, [CAT_BOX], [0]), sample(2, [], [])])
    assert results['coco/bbox_mAP'] == 0.5  # the cat is found, the dog missed


@pytest.mark.parametrize('metrics', [['bbox'], ['proposal'], ['bbox', 'segm'],
                                     ['segm', 'bbox', 'proposal']])
def test_no_detection_in_the_whole_dataset_logs_an_error_and_returns(ann_file, metrics):
    """mmdet logs 'The testing results of the whole dataset is empty.' and stops evaluating."""
    masks = torch.zeros(0, 150, 200, dtype=torch.bool) if 'segm' in metrics else None
    records, handler = capture_logs()
    try:
        results = evaluate(CocoMetric(ann_file=ann_file, metric=metrics, classwise=True),
                           [sample(1, [], [], masks=masks), sample(2, [], [], masks=masks)])
    finally:
        MMLogger.get_current_instance().removeHandler(handler)
    assert results == {}
    errors = [r.getMessage() for r in records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith('The testing results of the whole dataset is empty.')
    assert all('Average Precision' not in r.getMessage() for r in records)  # nothing evaluated


def test_empty_later_metric_keeps_the_earlier_numbers(ann_file):
    # Image 1 predicts (no) masks, image 2 a box without masks: bbox is evaluated, segm has no
    # result at all, so it is skipped with the error, and bbox's numbers are returned.
    records, handler = capture_logs(logging.ERROR)
    try:
        results = evaluate(CocoMetric(ann_file=ann_file, metric=['bbox', 'segm']),
                           [sample(1, [], [], masks=torch.zeros(0, 150, 200, dtype=torch.bool)),
                            sample(2, [DOG_BOX], [1])])
    finally:
        MMLogger.get_current_instance().removeHandler(handler)
    assert results['coco/bbox_mAP'] == 0.5 and 'coco/segm_mAP' not in results
    assert len(records) == 1 and 'whole dataset is empty' in records[0].getMessage()


def test_segm_with_gt_masks_gives_one_and_keeps_only_rle(ann_file):
    metric = CocoMetric(ann_file=ann_file, metric=['bbox', 'segm'])
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process({}, [sample(1, [CAT_BOX], [0], masks=box_mask(CAT_BOX)[None]),
                        sample(2, [DOG_BOX], [1], masks=box_mask(DOG_BOX)[None])])
    kept = metric.results[0][1]
    assert isinstance(kept['masks'][0]['counts'], str) and isinstance(kept['bboxes'], np.ndarray)
    results = metric.evaluate(2)
    assert results['coco/segm_mAP'] == 1.0
    assert results['coco/bbox_mAP'] == 1.0


def test_gt_from_samples_without_ann_file():
    samples = [sample(1, [CAT_BOX], [0]), sample(2, [DOG_BOX], [0])]
    samples[0]['instances'] = [dict(bbox=CAT_BOX, bbox_label=0, ignore_flag=0)]
    samples[1]['instances'] = [dict(bbox=DOG_BOX, bbox_label=1, ignore_flag=0)]
    results = evaluate(CocoMetric(), samples)
    assert results['coco/bbox_mAP'] == 0.5  # the dog is predicted as a cat
    with pytest.raises(KeyError, match='instances'):
        CocoMetric().process({}, [sample(1, [CAT_BOX], [0])])


def test_summary_is_logged(ann_file):
    logger = MMLogger.get_current_instance()
    level = logger.level   # an earlier test may have left a WARNING-level logger current
    logger.setLevel(logging.INFO)
    records, handler = capture_logs()
    try:
        evaluate(CocoMetric(ann_file=ann_file), [sample(1, [CAT_BOX], [0])])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    summary = '\n'.join(record.getMessage() for record in records)
    assert summary.count('Average Precision') == 6 and summary.count('Average Recall') == 6


def test_bad_configuration_fails_with_clear_errors(ann_file):
    with pytest.raises(KeyError, match='metric must be one of'):
        CocoMetric(ann_file=ann_file, metric='bboxes')
    with pytest.raises(ValueError, match='outfile_prefix'):
        CocoMetric(ann_file=ann_file, format_only=True)
    metric = CocoMetric(ann_file=ann_file)
    metric.dataset_meta = dict(classes=('cat', 'horse'))
    metric.process({}, [sample(1, [CAT_BOX], [0])])
    with pytest.raises(ValueError, match="horse"):
        metric.evaluate(1)
