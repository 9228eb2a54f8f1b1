"""RPNHead on a tiny 2-level input: shapes, losses against a per-anchor loop, and proposals against
a brute-force per-image, per-level reference (top-k, decode, clip, min size, NMS, merge, top K)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mmengine.structures import InstanceData
from torchvision.ops import nms

from rcnn_det.models.dense_heads import RPNHead
from rcnn_det.models.recipes import NMSConfig, ProposalRecipe
from rcnn_det.models.task_modules import anchor_targets
from rcnn_det.registry import MODELS
from rcnn_det.structures import DetDataSample

STRIDES = [4, 8]
TRAIN_CFG = dict(
    assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                  match_low_quality=True, ignore_iof_thr=-1),
    # num large enough to keep every positive and negative: the loss is deterministic
    sampler=dict(type='RandomSampler', num=100000, pos_fraction=0.5, neg_pos_ub=-1,
                 add_gt_as_proposals=False),
    allowed_border=-1, pos_weight=-1, debug=False)
TEST_CFG = dict(nms_pre=50, max_per_img=30, nms=dict(type='nms', iou_threshold=0.7),
                min_bbox_size=0)
METAS = [dict(img_shape=(30, 28), pad_shape=(32, 32), batch_input_shape=(32, 32),
              scale_factor=(2.0, 1.5)),
         dict(img_shape=(20, 32), pad_shape=(20, 32), batch_input_shape=(32, 32),
              scale_factor=(0.5, 0.5))]


def make_head(**kwargs) -> RPNHead:
    torch.manual_seed(0)
    head = RPNHead(in_channels=4, feat_channels=8,
                   anchor_generator=dict(type='AnchorGenerator', scales=[2],
                                         ratios=[0.5, 1.0, 2.0], strides=STRIDES),
                   train_cfg=TRAIN_CFG, test_cfg=TEST_CFG, **kwargs)
    head.init_weights()
    return head


def feats(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 4, 4, generator=g)


def samples() -> list[DetDataSample]:
    gts = [InstanceData(bboxes=torch.tensor([[2., 3., 12., 11.], [14., 14., 27., 29.]]),
                        labels=torch.tensor([3, 1])),
           InstanceData(bboxes=torch.tensor([[0., 0., 9., 9.]]), labels=torch.tensor([0]))]
    out = []
    for gt, meta in zip(gts, METAS):
        s = DetDataSample(metainfo=meta)
        s.gt_instances = gt
        out.append(s)
    return out


def test_forward_shapes_two_levels():
    head = make_head()
    cls_scores, bbox_preds = head(feats())
    assert [tuple(c.shape) for c in cls_scores] == [(2, 3, 8, 8), (2, 3, 4, 4)]
    assert [tuple(b.shape) for b in bbox_preds] == [(2, 12, 8, 8), (2, 12, 4, 4)]
    # softmax objectness: two channels per anchor
    soft = make_head(loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False))
    assert soft.cls_out_channels == 2
    assert soft(feats())[0][0].shape == (2, 6, 8, 8)
    assert set(head.state_dict()) == {'rpn_conv.weight', 'rpn_conv.bias', 'rpn_cls.weight',
                                      'rpn_cls.bias', 'rpn_reg.weight', 'rpn_reg.bias'}


def test_loss_keys_shapes_finite_and_grads():
    head = make_head()
    x = tuple(f.requires_grad_() for f in feats())
    losses = head.loss(x, samples())
    assert set(losses) == {'loss_rpn_cls', 'loss_rpn_bbox'}
    for key in losses:
        assert len(losses[key]) == 2
        assert all(v.dim() == 0 and torch.isfinite(v) for v in losses[key])
    assert all(v > 0 for v in losses['loss_rpn_cls'])
    total = sum(sum(v) for v in losses.values())
    total.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x[0].grad.abs().sum() > 0 and x[1].grad.abs().sum() > 0


def test_loss_values_against_per_anchor_loop():
    head = make_head()
    x = feats(1)
    losses = head.loss(x, samples())
    cls_scores, bbox_preds = head(x)
    anchors = head.prior_generator.grid_priors([(8, 8), (4, 4)])
    # image 1 is padded only to (20, 32): anchors centred below row ceil(20 / stride) are invalid
    valid = torch.tensor([[True] * 240,
                          [y < -(-20 // s) for s, n in zip(STRIDES, (8, 4))
                           for y in range(n) for _ in range(n) for _ in range(3)]])
    assert 0 < int(valid[1].sum()) < 240
    gts = [s.gt_instances for s in samples()]
    t = anchor_targets(torch.cat(anchors), valid, gts, [None, None], head.train_recipe,
                       head.bbox_coder, 1, class_agnostic=True)
    assert t.num_pos > 0
    cls_terms, box_terms = [0.0, 0.0], [0.0, 0.0]
    for b in range(2):
        n = 0
        for level, (cls, reg) in enumerate(zip(cls_scores, bbox_preds)):
            cls_l, reg_l = cls[b].tolist(), reg[b].tolist()
            for y in range(cls.shape[2]):
                for xx in range(cls.shape[3]):
                    for a in range(3):
                        logit = torch.tensor(cls_l[a][y][xx])
                        target = 1.0 if t.labels[b, n] == 0 else 0.0
                        bce = F.binary_cross_entropy_with_logits(logit, torch.tensor(target))
                        cls_terms[level] += float(bce) * float(t.label_weights[b, n])
                        delta = torch.tensor([reg_l[a * 4 + k][y][xx] for k in range(4)])
                        box_terms[level] += float(((delta - t.bbox_targets[b, n]).abs()
                                                   * t.bbox_weights[b, n]).sum())
                        n += 1
        assert n == valid.shape[1]
    norm = t.avg_factor
    assert [v.item() for v in losses['loss_rpn_cls']] == pytest.approx(
        [c / norm for c in cls_terms], rel=1e-4)
    assert [v.item() for v in losses['loss_rpn_bbox']] == pytest.approx(
        [c / norm for c in box_terms], rel=1e-4)


def reference_proposals(head: RPNHead, cls_scores, bbox_preds, metas, recipe: ProposalRecipe):
    """Per image: per level top-k -> decode -> clip -> min size -> NMS; merge; top max_per_img."""
    results = []
    for b, meta in enumerate(metas):
        h, w = meta['img_shape']
        all_boxes, all_scores = [], []
        for level, (cls, reg) in enumerate(zip(cls_scores, bbox_preds)):
            fh, fw = cls.shape[-2:]
            anchors = head.prior_generator.grid_priors([(8, 8), (4, 4)])[level]
            scores, deltas = [], []
            for y in range(fh):
                for x in range(fw):
                    for a in range(3):
                        scores.append(torch.sigmoid(cls[b, a, y, x]))
                        deltas.append(reg[b, a * 4:a * 4 + 4, y, x])
            scores, deltas = torch.stack(scores), torch.stack(deltas)
            k = min(recipe.nms_pre, scores.numel()) if recipe.nms_pre > 0 else scores.numel()
            order = scores.argsort(descending=True)[:k]
            boxes = head.bbox_coder.decode(anchors[order], deltas[order])
            boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                                 boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], 1)
            level_scores = scores[order]
            if recipe.min_bbox_size >= 0:
                big = ((boxes[:, 2] - boxes[:, 0] > recipe.min_bbox_size)
                       & (boxes[:, 3] - boxes[:, 1] > recipe.min_bbox_size))
                boxes, level_scores = boxes[big], level_scores[big]
            keep = nms(boxes, level_scores, recipe.nms.iou_threshold)
            all_boxes.append(boxes[keep])
            all_scores.append(level_scores[keep])
        boxes, scores = torch.cat(all_boxes), torch.cat(all_scores)
        order = scores.argsort(descending=True)[:recipe.max_per_img]
        results.append((boxes[order], scores[order]))
    return results


@pytest.mark.parametrize('nms_pre, max_per_img, iou, min_size', [
    (50, 30, 0.7, 0), (1000, 1000, 0.5, -1), (20, 10, 0.3, 3.0), (-1, 25, 0.7, 0)])
def test_predict_by_feat_equals_brute_force(nms_pre, max_per_img, iou, min_size):
    head = make_head()
    g = torch.Generator().manual_seed(3)
    cls_scores = [torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 4, 4, generator=g)]
    bbox_preds = [torch.randn(2, 12, 8, 8, generator=g) * 0.7,
                  torch.randn(2, 12, 4, 4, generator=g) * 0.7]
    recipe = ProposalRecipe(nms_pre=nms_pre, max_per_img=max_per_img,
                            nms=NMSConfig(iou_threshold=iou),
                            min_bbox_size=min_size)
    got = head.predict_by_feat(cls_scores, bbox_preds, METAS, recipe)
    expected = reference_proposals(head, cls_scores, bbox_preds, METAS, recipe)
    assert len(got) == 2
    for res, (boxes, scores), meta in zip(got, expected, METAS):
        assert res.bboxes.shape == boxes.shape and res.bboxes.shape[0] <= max_per_img
        torch.testing.assert_close(res.bboxes, boxes, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(res.scores, scores)
        assert (res.labels == 0).all() and res.labels.dtype == torch.long
        h, w = meta['img_shape']
        assert (res.bboxes >= 0).all()
        assert (res.bboxes[:, [0, 2]] <= w).all() and (res.bboxes[:, [1, 3]] <= h).all()
        if min_size >= 0:
            assert ((res.bboxes[:, 2] - res.bboxes[:, 0] > min_size)
                    & (res.bboxes[:, 3] - res.bboxes[:, 1] > min_size)).all()
    # some boxes really were clipped, so the clip was exercised
    assert any((r.bboxes[:, 2] == m['img_shape'][1]).any() for r, m in zip(got, METAS))


def test_min_bbox_size_filters():
    head = make_head()
    g = torch.Generator().manual_seed(4)
    cls_scores = [torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 4, 4, generator=g)]
    bbox_preds = [torch.zeros(2, 12, 8, 8), torch.zeros(2, 12, 4, 4)]
    # zero deltas: the proposals are the anchors clipped to the image; level 0 anchors are at most
    # 8 * sqrt(2) = 11.3 wide and high, level 1 anchors are at most 22.6
    keep_all = head.predict_by_feat(cls_scores, bbox_preds, METAS,
                                    ProposalRecipe(nms_pre=1000, max_per_img=1000,
                                                   nms=NMSConfig(iou_threshold=1.0),
                                                   min_bbox_size=-1))
    big = head.predict_by_feat(cls_scores, bbox_preds, METAS,
                               ProposalRecipe(nms_pre=1000, max_per_img=1000,
                                              nms=NMSConfig(iou_threshold=1.0), min_bbox_size=11.5))
    for all_res, big_res in zip(keep_all, big):
        wh = all_res.bboxes[:, 2:] - all_res.bboxes[:, :2]
        expected = int(((wh[:, 0] > 11.5) & (wh[:, 1] > 11.5)).sum())
        assert 0 < expected < len(all_res)
        assert len(big_res) == expected
        assert ((big_res.bboxes[:, 2:] - big_res.bboxes[:, :2]) > 11.5).all()


def test_min_bbox_size_in_the_original_frame_for_final_proposals():
    # mmdet's RPN detector measures min_bbox_size after rescaling to the original image: with
    # scale factors (1.5, 0.5) a side of s input pixels is s / 1.5 or s / 0.5 original pixels.
    head = make_head()
    g = torch.Generator().manual_seed(4)
    cls_scores = [torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 4, 4, generator=g)]
    bbox_preds = [torch.zeros(2, 12, 8, 8), torch.zeros(2, 12, 4, 4)]
    base = dict(nms_pre=1000, max_per_img=1000, nms=NMSConfig(iou_threshold=1.0),
                min_bbox_size=5.0)
    every = head.predict_by_feat(cls_scores, bbox_preds, METAS,
                                 ProposalRecipe(**dict(base, min_bbox_size=-1)))
    original = head.predict_by_feat(cls_scores, bbox_preds, METAS,
                                    ProposalRecipe(**base, size_frame='original'))
    for all_res, res, meta in zip(every, original, METAS):
        sx, sy = meta['scale_factor']
        wh = (all_res.bboxes[:, 2:] - all_res.bboxes[:, :2]) / torch.tensor([sx, sy])
        expected = int((wh > 5.0).all(1).sum())
        assert 0 < expected < len(all_res) and len(res) == expected
    input_frame = head.predict_by_feat(cls_scores, bbox_preds, METAS, ProposalRecipe(**base))
    assert [len(r) for r in input_frame] != [len(r) for r in original]


def test_the_coder_clip_border_decides_the_clipping():
    """mmdetection's coders clip decoded boxes to the image only with clip_border=True."""
    g = torch.Generator().manual_seed(3)
    cls_scores = [torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 4, 4, generator=g)]
    bbox_preds = [torch.randn(2, 12, 8, 8, generator=g), torch.randn(2, 12, 4, 4, generator=g)]
    recipe = ProposalRecipe(nms_pre=-1, max_per_img=1000, nms=NMSConfig(iou_threshold=1.0))
    outside = []
    for clip in (True, False):
        head = make_head(bbox_coder=dict(type='DeltaXYWHBBoxCoder', clip_border=clip))
        res = head.predict_by_feat(cls_scores, bbox_preds, METAS, recipe)
        outside.append(sum(int(((r.bboxes < 0).any(1) | (r.bboxes[:, 2] > m['img_shape'][1])
                                | (r.bboxes[:, 3] > m['img_shape'][0])).sum())
                           for r, m in zip(res, METAS)))
    assert outside[0] == 0 and outside[1] > 0


def test_loss_and_predict_detaches_its_proposals():
    head = make_head()
    x = tuple(f.requires_grad_() for f in feats(6))
    recipe = ProposalRecipe.from_cfg(dict(nms_pre=40, max_per_img=12, min_bbox_size=0,
                                          nms=dict(type='nms', iou_threshold=0.7)), 'where')
    losses, proposals = head.loss_and_predict(x, samples(), recipe)
    assert set(losses) == {'loss_rpn_cls', 'loss_rpn_bbox'}
    assert len(proposals) == 2 and all(len(p) <= 12 for p in proposals)
    assert all(not p.bboxes.requires_grad for p in proposals)


def test_loss_and_predict_equals_separate_loss_and_predict():
    # loss_and_predict builds the anchor grid once for both; the results must not change.
    head = make_head()
    x = feats(7)
    recipe = ProposalRecipe(nms_pre=40, max_per_img=12, nms=NMSConfig(iou_threshold=0.7),
                            min_bbox_size=0)
    torch.manual_seed(0)
    losses, proposals = head.loss_and_predict(x, samples(), recipe)
    cls_scores, bbox_preds = head(x)
    torch.manual_seed(0)  # the sampler draws the same random subset
    separate = head.loss_by_feat(cls_scores, bbox_preds, samples())
    metas = [s.metainfo for s in samples()]
    expected = head.predict_by_feat(cls_scores, bbox_preds, metas, recipe)
    for key in losses:
        torch.testing.assert_close(torch.stack(losses[key]), torch.stack(separate[key]))
    for got, want in zip(proposals, expected):
        torch.testing.assert_close(got.bboxes, want.bboxes)
        torch.testing.assert_close(got.scores, want.scores)


def test_config_errors():
    with pytest.raises(KeyError, match="did you mean 'assigner'"):
        RPNHead(in_channels=4, train_cfg=dict(TRAIN_CFG, asigner=None))
    with pytest.raises(ValueError, match='num_classes'):
        RPNHead(in_channels=4, num_classes=2)
    head = MODELS.build(dict(type='RPNHead', in_channels=4, feat_channels=8))
    with pytest.raises(RuntimeError, match='train_cfg'):
        head.loss(feats(), samples())


def test_loss_with_an_image_without_objects():
    head = make_head()
    batch = samples()
    empty = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    batch[0].gt_instances = empty
    batch[1].gt_instances = empty
    x = tuple(f.requires_grad_() for f in feats())
    losses = head.loss(x, batch)
    assert all(torch.isfinite(v) and v > 0 for v in losses['loss_rpn_cls'])
    assert all(v.item() == 0 and v.requires_grad for v in losses['loss_rpn_bbox'])
    sum(sum(v) for v in losses.values()).backward()
    assert head.rpn_reg.weight.grad is not None and (head.rpn_reg.weight.grad == 0).all()
