"""Shared2FCBBoxHead: targets from hand-built SamplingResults, losses against loops, and
predict_by_feat against a brute-force per-image, per-class NMS reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from rcnn_det.models.recipes import DetectionRecipe, NMSConfig
from rcnn_det.models.roi_heads import RoITargets, Shared2FCBBoxHead
from rcnn_det.models.task_modules import DeltaXYWHBBoxCoder, SamplingResult
from rcnn_det.registry import MODELS

NUM_CLASSES = 3
STDS = (0.1, 0.1, 0.2, 0.2)


def make_head(**kwargs) -> Shared2FCBBoxHead:
    torch.manual_seed(0)
    return Shared2FCBBoxHead(num_classes=NUM_CLASSES, in_channels=2, roi_feat_size=2,
                             fc_out_channels=8, **kwargs)


def sampling_result(pos_priors, pos_gts, pos_labels, neg_priors) -> SamplingResult:
    num_pos, num_neg = len(pos_priors), len(neg_priors)
    return SamplingResult(
        pos_inds=torch.arange(num_pos), neg_inds=torch.arange(num_pos, num_pos + num_neg),
        pos_priors=torch.tensor(pos_priors).reshape(-1, 4),
        neg_priors=torch.tensor(neg_priors).reshape(-1, 4),
        pos_gt_bboxes=torch.tensor(pos_gts).reshape(-1, 4),
        pos_gt_labels=torch.tensor(pos_labels, dtype=torch.long),
        pos_assigned_gt_inds=torch.zeros(num_pos, dtype=torch.long),
        pos_is_gt=torch.zeros(num_pos, dtype=torch.bool), num_gts=1,
        avg_factor=max(num_pos, 1) + max(num_neg, 1))


RESULTS = [
    sampling_result([[0., 0., 10., 10.], [2., 0., 12., 10.]],
                    [[0., 0., 10., 10.], [0., 0., 10., 20.]], [2, 0],
                    [[50., 50., 60., 60.]]),
    sampling_result([], [], [], [[1., 1., 5., 5.], [7., 7., 9., 9.]]),
]


def test_get_targets_hand_built():
    head = make_head()
    t = head.get_targets(RESULTS)
    assert t.labels.tolist() == [2, 0, 3, 3, 3]               # background = num_classes
    assert t.label_weights.tolist() == [1., 1., 1., 1., 1.]
    # prior [2, 0, 12, 10] -> gt [0, 0, 10, 20]: dx = -2 / 10, dy = 5 / 10, dw = 0, dh = log 2
    expected = torch.zeros(5, 4)
    expected[1] = torch.tensor([-0.2, 0.5, 0., 0.693147]) / torch.tensor(STDS)
    torch.testing.assert_close(t.bbox_targets, expected, rtol=1e-5, atol=1e-5)
    assert t.bbox_weights.tolist() == [[1.] * 4, [1.] * 4, [0.] * 4, [0.] * 4, [0.] * 4]
    t = head.get_targets(RESULTS, pos_weight=2.0)
    assert t.label_weights.tolist() == [2., 2., 1., 1., 1.]
    decoded = make_head(reg_decoded_bbox=True).get_targets(RESULTS)
    torch.testing.assert_close(decoded.bbox_targets[:2], RESULTS[0].pos_gt_bboxes)


def test_loss_against_loop():
    head = make_head()
    g = torch.Generator().manual_seed(1)
    cls_score = torch.randn(5, NUM_CLASSES + 1, generator=g, requires_grad=True)
    bbox_pred = torch.randn(5, 4 * NUM_CLASSES, generator=g, requires_grad=True)
    rois = torch.cat([torch.zeros(5, 1), torch.cat([RESULTS[0].priors, RESULTS[1].priors])], 1)
    losses, t = head.loss_and_target(cls_score, bbox_pred, rois, RESULTS)
    assert set(losses) == {'loss_cls', 'acc', 'loss_bbox'}
    torch.testing.assert_close(losses['loss_cls'], F.cross_entropy(cls_score, t.labels))
    expected_acc = 100 * (cls_score.argmax(1) == t.labels).float().mean()
    torch.testing.assert_close(losses['acc'], expected_acc)
    # L1 on the predicted deltas of each positive's own class, normalised by all 5 sampled RoIs
    expected_bbox = sum((bbox_pred[i, 4 * k:4 * k + 4] - t.bbox_targets[i]).abs().sum()
                        for i, k in [(0, 2), (1, 0)]) / 5
    torch.testing.assert_close(losses['loss_bbox'], expected_bbox)
    (losses['loss_cls'] + losses['loss_bbox']).backward()
    assert bbox_pred.grad[2:].abs().sum() == 0 and bbox_pred.grad[0, 8:].abs().sum() > 0
    assert bbox_pred.grad[0, :8].abs().sum() == 0


def test_loss_class_agnostic_regression():
    head = make_head(reg_class_agnostic=True)
    assert head.fc_reg.out_features == 4
    g = torch.Generator().manual_seed(2)
    cls_score = torch.randn(5, NUM_CLASSES + 1, generator=g)
    bbox_pred = torch.randn(5, 4, generator=g)
    rois = torch.cat([torch.zeros(5, 1), torch.cat([RESULTS[0].priors, RESULTS[1].priors])], 1)
    losses, t = head.loss_and_target(cls_score, bbox_pred, rois, RESULTS)
    expected = (bbox_pred[:2] - t.bbox_targets[:2]).abs().sum() / 5
    torch.testing.assert_close(losses['loss_bbox'], expected)


def test_loss_without_positives_is_zero_and_keeps_grad():
    head = make_head()
    cls_score = torch.randn(2, NUM_CLASSES + 1, requires_grad=True)
    bbox_pred = torch.randn(2, 4 * NUM_CLASSES, requires_grad=True)
    rois = torch.cat([torch.zeros(2, 1), RESULTS[1].priors], 1)
    losses, t = head.loss_and_target(cls_score, bbox_pred, rois, [RESULTS[1]])
    assert t.labels.tolist() == [3, 3]
    assert losses['loss_bbox'].item() == 0 and losses['loss_bbox'].requires_grad
    torch.testing.assert_close(losses['loss_cls'], F.cross_entropy(cls_score, t.labels))
    (losses['loss_cls'] + losses['loss_bbox']).backward()
    assert bbox_pred.grad is not None and (bbox_pred.grad == 0).all()


def test_loss_reg_decoded_bbox_decodes_each_rois_own_deltas():
    head = make_head(reg_decoded_bbox=True)
    g = torch.Generator().manual_seed(3)
    cls_score = torch.randn(5, NUM_CLASSES + 1, generator=g)
    bbox_pred = torch.randn(5, 4 * NUM_CLASSES, generator=g)
    rois = torch.cat([torch.zeros(5, 1), torch.cat([RESULTS[0].priors, RESULTS[1].priors])], 1)
    losses, t = head.loss_and_target(cls_score, bbox_pred, rois, RESULTS)
    coder = DeltaXYWHBBoxCoder(target_stds=STDS)
    expected = sum((coder.decode(rois[i:i + 1, 1:], bbox_pred[i:i + 1, 4 * k:4 * k + 4])[0]
                    - t.bbox_targets[i]).abs().sum() for i, k in [(0, 2), (1, 0)]) / 5
    torch.testing.assert_close(losses['loss_bbox'], expected)


def reference_detections(rois, cls_score, bbox_pred, metas, recipe, agnostic=False):
    coder = DeltaXYWHBBoxCoder(target_stds=STDS)
    probs = cls_score.softmax(-1)
    out = []
    for b, meta in enumerate(metas):
        h, w = meta['img_shape']
        boxes, scores, labels = [], [], []
        for c in range(NUM_CLASSES):
            cand_boxes, cand_scores = [], []
            for i in range(rois.shape[0]):
                if int(rois[i, 0]) != b or not probs[i, c] > recipe.score_thr:
                    continue
                delta = bbox_pred[i, :4] if agnostic else bbox_pred[i, 4 * c:4 * c + 4]
                box = coder.decode(rois[i, 1:][None], delta[None])[0]
                box = torch.stack([box[0].clamp(0, w), box[1].clamp(0, h),
                                   box[2].clamp(0, w), box[3].clamp(0, h)])
                if min(box[2] - box[0], box[3] - box[1]) <= recipe.min_bbox_size:
                    continue
                cand_boxes.append(box)
                cand_scores.append(probs[i, c])
            if not cand_boxes:
                continue
            cand_boxes, cand_scores = torch.stack(cand_boxes), torch.stack(cand_scores)
            keep = nms(cand_boxes, cand_scores, recipe.nms.iou_threshold)
            boxes.append(cand_boxes[keep])
            scores.append(cand_scores[keep])
            labels += [c] * len(keep)
        if not boxes:
            out.append((torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)))
            continue
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.tensor(labels)
        order = scores.argsort(descending=True)[:recipe.max_per_img]
        out.append((boxes[order], scores[order], labels[order]))
    return out


def random_rois(g, num: int, image: int, size: float) -> torch.Tensor:
    # clustered boxes, so that NMS has overlaps to suppress
    xy = torch.rand(num, 2, generator=g) * size * 0.3 + size * 0.2
    wh = torch.rand(num, 2, generator=g) * size * 0.4 + 4
    return torch.cat([torch.full((num, 1), float(image)), xy, xy + wh], 1)


@pytest.mark.parametrize('score_thr, iou, max_per_img, agnostic, min_size', [
    (0.05, 0.5, 100, False, -1), (0.2, 0.3, 7, False, -1), (0.0, 0.5, 100, True, -1),
    (0.9, 0.5, 100, False, -1), (0.05, 0.5, 100, False, 12.0)])
def test_predict_by_feat_equals_brute_force(score_thr, iou, max_per_img, agnostic, min_size):
    head = make_head(reg_class_agnostic=agnostic)
    g = torch.Generator().manual_seed(4)
    rois = torch.cat([random_rois(g, 25, 0, 60.), random_rois(g, 18, 1, 40.)])
    cls_score = torch.randn(43, NUM_CLASSES + 1, generator=g) * 2
    bbox_pred = torch.randn(43, 4 if agnostic else 4 * NUM_CLASSES, generator=g) * 0.5
    metas = [dict(img_shape=(50, 45), scale_factor=(1.5, 2.0)),
             dict(img_shape=(30, 40), scale_factor=(0.5, 0.25))]
    recipe = DetectionRecipe(score_thr=score_thr, nms=NMSConfig(iou_threshold=iou),
                             max_per_img=max_per_img, min_bbox_size=min_size)
    got = head.predict_by_feat(rois, cls_score, bbox_pred, metas, recipe)
    if min_size > 0:   # the size filter really removes boxes
        unfiltered = head.predict_by_feat(rois, cls_score, bbox_pred, metas,
                                          DetectionRecipe(score_thr=score_thr))
        assert sum(map(len, got)) < sum(map(len, unfiltered))
    expected = reference_detections(rois, cls_score, bbox_pred, metas, recipe, agnostic)
    suppressed = 0
    for res, (boxes, scores, labels), b in zip(got, expected, range(2)):
        assert len(res) == len(boxes) <= max_per_img
        torch.testing.assert_close(res.bboxes, boxes, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(res.scores, scores)
        assert res.labels.tolist() == labels.tolist()
        suppressed += int(((cls_score.softmax(-1)[rois[:, 0] == b, :-1]) > score_thr).sum()) \
            - len(boxes)
    if score_thr < 0.5 and max_per_img == 100 and min_size < 0:
        assert suppressed > 0   # NMS really removed boxes


def test_predict_by_feat_without_rois():
    head = make_head()
    recipe = DetectionRecipe()
    res = head.predict_by_feat(torch.zeros(0, 5), torch.zeros(0, NUM_CLASSES + 1),
                               torch.zeros(0, 4 * NUM_CLASSES),
                               [dict(img_shape=(10, 10), scale_factor=(1., 1.))], recipe)
    assert len(res) == 1 and res[0].bboxes.shape == (0, 4) and len(res[0].labels) == 0


def test_forward_shapes_and_keys():
    head = MODELS.build(dict(type='Shared2FCBBoxHead', in_channels=2, fc_out_channels=8,
                             roi_feat_size=7, num_classes=5))
    cls_score, bbox_pred = head(torch.randn(4, 2, 7, 7))
    assert cls_score.shape == (4, 6) and bbox_pred.shape == (4, 20)
    assert set(head.state_dict()) == {
        'shared_fcs.0.weight', 'shared_fcs.0.bias', 'shared_fcs.1.weight', 'shared_fcs.1.bias',
        'fc_cls.weight', 'fc_cls.bias', 'fc_reg.weight', 'fc_reg.bias'}
    assert head.bbox_coder.stds == STDS
    assert isinstance(RoITargets, type)


def test_detection_recipe_rejects_unknown_paste_mode():
    with pytest.raises(ValueError, match="mask_paste must be 'mmdet' or 'torchvision'"):
        DetectionRecipe.from_cfg(dict(mask_paste='detectron2'), 'roi_head.test_cfg')
