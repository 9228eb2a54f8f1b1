"""VOCMetric: a hand-computed precision/recall curve in both AP modes, difficult gts, two IoU
thresholds, both ground-truth sources, and the vectorised matching against a loop reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mmengine.structures import InstanceData

from rcnn_det.evaluation import VOCMetric
from rcnn_det.evaluation.metrics.voc_metric import tpfp_image
from rcnn_det.structures.det_data_sample import DetDataSample

CLASSES = ('cat', 'dog')
# Three cat gts (0-based inclusive corners, 40 x 40 px in the legacy +1 convention) and one
# difficult cat.
GT_A, GT_B, GT_C = [10, 10, 49, 49], [60, 10, 99, 49], [10, 60, 49, 99]
GT_DIFFICULT = [110, 110, 149, 149]
# Detections, all 'cat':
#   0.9  exactly A                      IoU 1      -> TP
#   0.8  far from everything            IoU 0      -> FP
#   0.75 exactly the difficult gt       IoU 1      -> neither TP nor FP (left out of the curve)
#   0.7  B shifted by 4 px              IoU 36*40 / (2*1600 - 1440) = 0.818 -> TP at 0.5, FP at 0.9
#   0.6  A shifted by 2 px (duplicate)  IoU 38*38 / (2*1600 - 1444) = 0.822 -> FP (A taken / < 0.9)
DETS = [([10, 10, 49, 49], 0.9), ([200, 200, 239, 239], 0.8), (GT_DIFFICULT, 0.75),
        ([64, 10, 103, 49], 0.7), ([12, 12, 51, 51], 0.6)]
# IoU 0.5, without the difficult detection: TP, FP, TP, FP
#   cumulative tp 1 1 2 2, fp 0 1 1 2 -> precision 1, 1/2, 2/3, 1/2; recall 1/3, 1/3, 2/3, 2/3
#   area:     monotone precision 1 (r <= 1/3), 2/3 (r <= 2/3), 0 -> 1/3 * 1 + 1/3 * 2/3 = 5/9
#   11points: r = 0 .. 0.3 -> 1 (4 points); r = 0.4 .. 0.6 -> 2/3 (3 points); r >= 0.7 -> 0
#             (4 points) -> (4 + 2) / 11 = 6/11
# IoU 0.9: TP, FP, FP, FP -> precision 1, 1/2, 1/3, 1/4; recall 1/3 throughout
#   area: 1/3 * 1 = 1/3;  11points: 1 at r = 0 .. 0.3 -> 4/11
# 'dog' has no gt: it is left out of the mean, so mAP = the cat's AP.


def sample(with_gt_instances: bool = True) -> DetDataSample:
    """One image's data sample; ground truth as PackDetInputs or as the dataset's instances."""
    boxes, scores = zip(*DETS)
    data_sample = DetDataSample(metainfo=dict(img_id='000001', ori_shape=(300, 300)))
    data_sample.pred_instances = InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float32), scores=torch.tensor(scores),
        labels=torch.zeros(len(DETS), dtype=torch.long))
    if with_gt_instances:
        data_sample.gt_instances = InstanceData(
            bboxes=torch.tensor([GT_A, GT_B, GT_C], dtype=torch.float32),
            labels=torch.zeros(3, dtype=torch.long))
        data_sample.ignored_instances = InstanceData(
            bboxes=torch.tensor([GT_DIFFICULT], dtype=torch.float32),
            labels=torch.zeros(1, dtype=torch.long))
    else:
        data_sample.set_metainfo(dict(instances=[
            dict(bbox=box, bbox_label=0, ignore_flag=int(box is GT_DIFFICULT))
            for box in (GT_A, GT_B, GT_C, GT_DIFFICULT)]))
    return data_sample


def evaluate(metric: VOCMetric, samples: list) -> dict:
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process({}, samples)
    return metric.evaluate(len(samples))


@pytest.mark.parametrize('eval_mode, ap50, ap90', [('area', 5 / 9, 1 / 3),
                                                   ('11points', 6 / 11, 4 / 11)])
def test_hand_computed_ap_two_thresholds(eval_mode, ap50, ap90):
    results = evaluate(VOCMetric(iou_thrs=[0.5, 0.9], eval_mode=eval_mode), [sample()])
    assert list(results) == ['pascal_voc/mAP', 'pascal_voc/AP50', 'pascal_voc/AP90']
    assert results['pascal_voc/AP50'] == round(ap50, 3)
    assert results['pascal_voc/AP90'] == round(ap90, 3)
    assert results['pascal_voc/mAP'] == pytest.approx((ap50 + ap90) / 2)


def test_ground_truth_from_dataset_instances():
    results = evaluate(VOCMetric(eval_mode='area'), [sample(with_gt_instances=False).to_dict()])
    assert results == {'pascal_voc/mAP': pytest.approx(5 / 9), 'pascal_voc/AP50': 0.556}


def test_matched_difficult_gt_is_neither_tp_nor_fp():
    gt = dict(bboxes=np.zeros((0, 4)), labels=np.zeros(0, np.int64),
              bboxes_ignore=np.array([GT_DIFFICULT], np.float32), labels_ignore=np.zeros(1, int))
    pred = dict(bboxes=np.array([GT_DIFFICULT, [0, 0, 5, 5]], np.float32),
                scores=np.array([0.9, 0.8], np.float32), labels=np.zeros(2, np.int64))
    tp, fp = tpfp_image(gt, pred, 0.5, np.array([[-np.inf, np.inf]]))
    assert tp.tolist() == [[False, False]] and fp.tolist() == [[False, True]]


def test_errors_and_scale_ranges():
    with pytest.raises(KeyError, match='recall'):
        VOCMetric(metric='recall')
    with pytest.raises(ValueError, match='eval_mode'):
        VOCMetric(eval_mode='12points')
    # All boxes are 40 x 40 (legacy area 1600, scale 40): only the second range holds them.
    results = evaluate(VOCMetric(eval_mode='area', scale_ranges=[(0, 32), (32, 1e5)]),
                       [sample()])
    assert results['pascal_voc/AP50_0-32'] == 0.0
    assert results['pascal_voc/AP50_32-100000'] == round(5 / 9, 3)
    with pytest.raises(KeyError, match='instances'):
        metric = VOCMetric()
        metric.process({}, [dict(pred_instances=dict(bboxes=torch.zeros(0, 4),
                                                     scores=torch.zeros(0),
                                                     labels=torch.zeros(0)))])


def reference_tpfp(gt: dict, pred: dict, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """mmdet's tpfp_default loop (one class per call, no area ranges), over all classes."""
    tp, fp = np.zeros(len(pred['scores']), bool), np.zeros(len(pred['scores']), bool)
    for c in np.unique(pred['labels']):
        det_idx = np.flatnonzero(pred['labels'] == c)
        keep, ign = gt['labels'] == c, gt['labels_ignore'] == c
        boxes = np.concatenate([gt['bboxes'][keep], gt['bboxes_ignore'][ign]])
        ignored = np.arange(len(boxes)) >= keep.sum()
        covered = np.zeros(len(boxes), bool)
        for i in det_idx[np.argsort(-pred['scores'][det_idx], kind='stable')]:
            d = pred['bboxes'][i]
            best, best_iou = -1, -np.inf
            for j, g in enumerate(boxes):
                iw = min(d[2], g[2]) - max(d[0], g[0]) + 1
                ih = min(d[3], g[3]) - max(d[1], g[1]) + 1
                inter = max(iw, 0) * max(ih, 0)
                union = ((d[2] - d[0] + 1) * (d[3] - d[1] + 1)
                         + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - inter)
                if inter / union > best_iou:
                    best, best_iou = j, inter / union
            if best_iou >= thr:
                if not ignored[best]:
                    tp[i], fp[i] = not covered[best], covered[best]
                    covered[best] = True
            else:
                fp[i] = True
    return tp, fp


def test_vectorised_matching_equals_loop_reference():
    rng = np.random.default_rng(0)
    for _ in range(200):
        def boxes(n: int) -> np.ndarray:
            xy = rng.integers(0, 30, (n, 2))
            return np.concatenate([xy, xy + rng.integers(0, 20, (n, 2))], 1).astype(np.float32)
        g, i, d = rng.integers(0, 5), rng.integers(0, 3), rng.integers(0, 8)
        gt = dict(bboxes=boxes(g), labels=rng.integers(0, 2, g), bboxes_ignore=boxes(i),
                  labels_ignore=rng.integers(0, 2, i))
        pred = dict(bboxes=boxes(d), labels=rng.integers(0, 2, d),
                    scores=rng.integers(0, 3, d).astype(np.float32))  # many ties
        tp, fp = tpfp_image(gt, pred, 0.3, np.array([[-np.inf, np.inf]]))
        ref_tp, ref_fp = reference_tpfp(gt, pred, 0.3)
        assert tp[0].tolist() == ref_tp.tolist() and fp[0].tolist() == ref_fp.tolist()
