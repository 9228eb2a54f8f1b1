"""BBoxL1Cost, IoUCost, FocalLossCost and ClassificationCost against scalar formulas written out
with Python loops and the math module, one (prediction, ground truth) pair at a time."""
from __future__ import annotations

import math
import random

import pytest
import torch
from mmengine.structures import InstanceData

from rcnn_det.models.task_modules import (BBoxL1Cost, ClassificationCost, FocalLossCost,
                                          IoUCost)
from rcnn_det.registry import TASK_UTILS


def random_boxes(rng: random.Random, n: int, w: float, h: float) -> torch.Tensor:
    """n xyxy pixel boxes with positive sides inside a (h, w) image, float64."""
    boxes = []
    for _ in range(n):
        x1, y1 = rng.uniform(0, 0.8 * w), rng.uniform(0, 0.8 * h)
        boxes.append([x1, y1, x1 + rng.uniform(1, 0.5 * w), y1 + rng.uniform(1, 0.5 * h)])
    return torch.tensor(boxes, dtype=torch.float64).reshape(n, 4)


def ref_l1(pred, gt, img_h, img_w, box_format):
    """L1 between one normalised box pair, in xyxy or (cx, cy, w, h)."""
    def norm(b):
        x1, y1, x2, y2 = b[0] / img_w, b[1] / img_h, b[2] / img_w, b[3] / img_h
        if box_format == 'xywh':
            return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        return [x1, y1, x2, y2]
    return sum(abs(p - g) for p, g in zip(norm(pred), norm(gt)))


def ref_iou(a, b, mode):
    """IoU or GIoU of one box pair."""
    inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
             * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    iou = inter / union
    if mode == 'iou':
        return iou
    enclose = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return iou - (enclose - union) / enclose


def ref_focal(logit, alpha, gamma, eps):
    """Focal loss of calling one logit positive minus that of calling it negative."""
    p = 1.0 / (1.0 + math.exp(-logit))
    pos = alpha * (1 - p) ** gamma * -math.log(p + eps)
    neg = (1 - alpha) * p ** gamma * -math.log(1 - p + eps)
    return pos, neg


@pytest.mark.parametrize('box_format', ['xyxy', 'xywh'])
def test_bbox_l1_cost_matches_loop_reference(box_format):
    rng = random.Random(0)
    for case in range(20):
        img_h, img_w = rng.randint(20, 200), rng.randint(20, 200)   # h != w: the axes differ
        nq, ng = rng.randint(1, 7), rng.randint(1, 5)
        pred, gt = random_boxes(rng, nq, img_w, img_h), random_boxes(rng, ng, img_w, img_h)
        weight = rng.choice([1.0, 5.0, 0.5])
        cost = BBoxL1Cost(weight=weight, box_format=box_format)(
            InstanceData(bboxes=pred), InstanceData(bboxes=gt, labels=torch.zeros(ng).long()),
            img_meta=dict(img_shape=(img_h, img_w)))
        assert cost.shape == (nq, ng) and cost.dtype == torch.float64
        for i in range(nq):
            for j in range(ng):
                expected = weight * ref_l1(pred[i].tolist(), gt[j].tolist(), img_h, img_w,
                                           box_format)
                assert cost[i, j].item() == pytest.approx(expected, rel=1e-9, abs=1e-12), case


def test_bbox_l1_cost_hand_computed_formats_and_normalisation():
    # image 20 high, 40 wide; the boxes are 10 px apart horizontally, same size
    pred = InstanceData(bboxes=torch.tensor([[0., 0., 10., 20.]]))
    gt = InstanceData(bboxes=torch.tensor([[10., 0., 20., 20.]]), labels=torch.tensor([0]))
    meta = dict(img_shape=(20, 40))
    # xyxy: |x1| and |x2| each move 10/40
    assert BBoxL1Cost()(pred, gt, meta).item() == pytest.approx(0.5)
    # xywh: only cx moves, by 10/40; w and h agree
    assert BBoxL1Cost(box_format='xywh')(pred, gt, meta).item() == pytest.approx(0.25)
    # normalised by (w, h, w, h), not (h, w, h, w): swapping the shape doubles the x distance
    assert BBoxL1Cost()(pred, gt, dict(img_shape=(40, 20))).item() == pytest.approx(1.0)
    assert BBoxL1Cost(weight=5.0, box_format='xywh')(pred, gt, meta).item() == pytest.approx(1.25)
    # scaling image and boxes together leaves the cost unchanged
    big = BBoxL1Cost()(InstanceData(bboxes=pred.bboxes * 3),
                       InstanceData(bboxes=gt.bboxes * 3, labels=gt.labels),
                       dict(img_shape=(60, 120)))
    assert big.item() == pytest.approx(0.5)


def test_bbox_l1_cost_errors():
    pred = InstanceData(bboxes=torch.zeros(2, 4))
    gt = InstanceData(bboxes=torch.zeros(1, 4), labels=torch.zeros(1).long())
    with pytest.raises(ValueError, match='img_shape'):
        BBoxL1Cost()(pred, gt)
    with pytest.raises(ValueError, match='box_format'):
        BBoxL1Cost(box_format='cxcywh')


@pytest.mark.parametrize('iou_mode', ['iou', 'giou'])
def test_iou_cost_matches_loop_reference(iou_mode):
    rng = random.Random(1)
    for case in range(20):
        nq, ng = rng.randint(1, 7), rng.randint(1, 5)
        pred, gt = random_boxes(rng, nq, 50, 30), random_boxes(rng, ng, 50, 30)
        weight = rng.choice([1.0, 2.0])
        cost = IoUCost(iou_mode=iou_mode, weight=weight)(
            InstanceData(bboxes=pred), InstanceData(bboxes=gt, labels=torch.zeros(ng).long()))
        assert cost.shape == (nq, ng)
        for i in range(nq):
            for j in range(ng):
                expected = -weight * ref_iou(pred[i].tolist(), gt[j].tolist(), iou_mode)
                assert cost[i, j].item() == pytest.approx(expected, abs=1e-9), case


def test_iou_cost_hand_computed_and_fp16():
    pred = torch.tensor([[0., 0., 10., 10.], [20., 0., 30., 10.]])
    gt = torch.tensor([[0., 0., 10., 20.]])
    gt_inst = InstanceData(bboxes=gt, labels=torch.tensor([0]))
    # IoU 0.5 and 0; GIoU of the disjoint pair: enclose 30x20 = 600, union 300 -> -0.5
    iou = IoUCost(iou_mode='iou')(InstanceData(bboxes=pred), gt_inst)
    giou = IoUCost()(InstanceData(bboxes=pred), gt_inst)
    assert iou.flatten().tolist() == pytest.approx([-0.5, 0.0])
    assert giou.flatten().tolist() == pytest.approx([-0.5, 0.5])
    # pixel boxes whose areas overflow fp16 (> 65504) are compared in fp32, returned in fp16
    big = InstanceData(bboxes=(pred * 30).half())
    cost = IoUCost()(big, InstanceData(bboxes=(gt * 30).half(), labels=gt_inst.labels))
    assert cost.dtype == torch.float16
    assert cost.float().flatten().tolist() == pytest.approx([-0.5, 0.5], abs=1e-3)
    with pytest.raises(ValueError, match='iou_mode'):
        IoUCost(iou_mode='diou')


def test_focal_loss_cost_matches_loop_reference():
    rng = random.Random(2)
    for case in range(20):
        nq, ng, nc = rng.randint(1, 7), rng.randint(1, 5), rng.randint(1, 6)
        logits = torch.tensor([[rng.gauss(0, 3) for _ in range(nc)] for _ in range(nq)],
                              dtype=torch.float64)
        labels = torch.tensor([rng.randrange(nc) for _ in range(ng)])
        alpha, gamma, weight = rng.choice([0.25, 0.5]), rng.choice([2, 1.5]), rng.choice([1., 2.])
        cost = FocalLossCost(alpha=alpha, gamma=gamma, weight=weight)(
            InstanceData(scores=logits), InstanceData(labels=labels))
        assert cost.shape == (nq, ng)
        for i in range(nq):
            for j in range(ng):
                pos, neg = ref_focal(logits[i, labels[j]].item(), alpha, gamma, 1e-12)
                assert cost[i, j].item() == pytest.approx(weight * (pos - neg), rel=1e-9,
                                                          abs=1e-12), case


def test_focal_loss_cost_prefers_confident_right_class():
    logits = torch.tensor([[5., -5.], [-5., 5.], [0., 0.]])
    cost = FocalLossCost()(InstanceData(scores=logits), InstanceData(labels=torch.tensor([1, 0])))
    # gt 0 has class 1: query 1 is cheapest; gt 1 has class 0: query 0 is cheapest
    assert cost[:, 0].argmin().item() == 1 and cost[:, 1].argmin().item() == 0
    assert cost[1, 0].item() < 0 < cost[0, 0].item()


def test_focal_loss_cost_binary_input_masks_matches_loop_reference():
    rng = random.Random(3)
    nq, ng, h, w = 4, 3, 3, 5
    mask_logits = torch.tensor([[[rng.gauss(0, 2) for _ in range(w)] for _ in range(h)]
                                for _ in range(nq)], dtype=torch.float64)
    gt_masks = torch.tensor([[[rng.randint(0, 1) for _ in range(w)] for _ in range(h)]
                             for _ in range(ng)], dtype=torch.uint8)
    cost = FocalLossCost(weight=2.0, binary_input=True)(
        InstanceData(masks=mask_logits), InstanceData(masks=gt_masks))
    assert cost.shape == (nq, ng)
    for i in range(nq):
        for j in range(ng):
            total = 0.0
            for y in range(h):
                for x in range(w):
                    pos, neg = ref_focal(mask_logits[i, y, x].item(), 0.25, 2, 1e-12)
                    total += pos if gt_masks[j, y, x] else neg
            assert cost[i, j].item() == pytest.approx(2.0 * total / (h * w), rel=1e-9)


def test_classification_cost_matches_loop_reference():
    rng = random.Random(4)
    for case in range(20):
        nq, ng, nc = rng.randint(1, 7), rng.randint(1, 5), rng.randint(2, 6)
        logits = [[rng.gauss(0, 2) for _ in range(nc)] for _ in range(nq)]
        labels = [rng.randrange(nc) for _ in range(ng)]
        weight = rng.choice([1.0, 3.0])
        cost = ClassificationCost(weight=weight)(
            InstanceData(scores=torch.tensor(logits, dtype=torch.float64)),
            InstanceData(labels=torch.tensor(labels)))
        assert cost.shape == (nq, ng)
        for i in range(nq):
            denom = sum(math.exp(v) for v in logits[i])
            for j in range(ng):
                expected = -weight * math.exp(logits[i][labels[j]]) / denom
                assert cost[i, j].item() == pytest.approx(expected, rel=1e-9), case


def test_costs_build_from_registry_with_mmdet_arguments():
    focal = TASK_UTILS.build(dict(type='FocalLossCost', alpha=0.5, gamma=1, eps=1e-8,
                                  binary_input=False, weight=2.0))
    assert (focal.alpha, focal.gamma, focal.eps, focal.weight) == (0.5, 1, 1e-8, 2.0)
    l1 = TASK_UTILS.build(dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'))
    assert (l1.weight, l1.box_format) == (5.0, 'xywh')
    iou = TASK_UTILS.build(dict(type='IoUCost', iou_mode='giou', weight=2.0))
    assert (iou.iou_mode, iou.weight) == ('giou', 2.0)
    cls = TASK_UTILS.build(dict(type='ClassificationCost', weight=1.0))
    assert isinstance(cls, ClassificationCost) and cls.weight == 1.0
    # defaults as mmdet
    assert BBoxL1Cost().box_format == 'xyxy' and IoUCost().iou_mode == 'giou'
    f = FocalLossCost()
    assert (f.alpha, f.gamma, f.eps, f.binary_input, f.weight) == (0.25, 2, 1e-12, False, 1.0)
