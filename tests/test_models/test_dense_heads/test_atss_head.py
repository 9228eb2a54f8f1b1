"""ATSSHead on a tiny 2-level input: centerness targets, mmdet's parameter layout, losses against
a reference written as mmdetection structures it (ATSSAssigner per image, then per level and per
image focal / GIoU / centerness terms), and detections against a per-(anchor, class) brute force.

Shape letters: B = 2 images, C = 3 classes, A anchors per location, levels of 8x8 and 4x4.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mmengine.structures import InstanceData
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from rcnn_det.models.dense_heads import ATSSHead
from rcnn_det.models.dense_heads.atss_head import centerness_target, level_sums
from rcnn_det.models.recipes import DenseDetectionRecipe, NMSConfig
from rcnn_det.models.task_modules.assigners import ATSSAssigner
from rcnn_det.models.task_modules.samplers import PseudoSampler, RandomSampler
from rcnn_det.registry import MODELS
from rcnn_det.structures import DetDataSample

C = 3
STRIDES = [4, 8]
SIZES = [(8, 8), (4, 4)]           # feature maps of a 32x32 batch input
OCTAVE_BASE_SCALE = 2
STDS = (0.1, 0.1, 0.2, 0.2)        # ATSS's DeltaXYWHBBoxCoder target_stds (means 0)
TRAIN_CFG = dict(assigner=dict(type='ATSSAssigner', topk=9), allowed_border=-1, pos_weight=-1,
                 debug=False)
TEST_CFG = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                nms=dict(type='nms', iou_threshold=0.6), max_per_img=100)
# image 1 is padded to (20, 28) only: level 0 keeps rows < 5 and columns < 7, level 1 rows < 3
METAS = [dict(img_shape=(30, 28), pad_shape=(32, 32), batch_input_shape=(32, 32),
              scale_factor=(2.0, 1.5)),
         dict(img_shape=(20, 26), pad_shape=(20, 28), batch_input_shape=(32, 32),
              scale_factor=(0.5, 0.8))]
GTS = [(torch.tensor([[2., 3., 12., 11.], [14., 10., 27., 29.], [5., 16., 13., 26.]]),
        torch.tensor([C - 1, 0, 1])),
       (torch.tensor([[1., 1., 10., 12.], [12., 4., 25., 19.]]), torch.tensor([1, C - 1]))]


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """These tensors are tiny: intra-op threads only add synchronisation, which costs 100x on a
    busy machine. Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_head(ratios=(1.0,), **kwargs) -> ATSSHead:
    torch.manual_seed(0)
    cfg = dict(num_classes=C, in_channels=4, feat_channels=8, stacked_convs=1,
               norm_cfg=dict(type='GN', num_groups=4, requires_grad=True),
               anchor_generator=dict(type='AnchorGenerator', ratios=list(ratios),
                                     octave_base_scale=OCTAVE_BASE_SCALE, scales_per_octave=1,
                                     strides=STRIDES),
               train_cfg=TRAIN_CFG, test_cfg=TEST_CFG)
    cfg.update(kwargs)
    head = ATSSHead(**cfg)
    head.init_weights()
    return head


def feats(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 4, 4, generator=g)


def head_outputs(num_anchors: int, seed: int) -> tuple[list, list, list]:
    """Random (cls_scores, bbox_preds, centernesses) maps, as the head's forward shapes them."""
    g = torch.Generator().manual_seed(seed)
    cls = [torch.randn(2, num_anchors * C, h, w, generator=g) for h, w in SIZES]
    reg = [torch.randn(2, num_anchors * 4, h, w, generator=g) for h, w in SIZES]
    ctr = [torch.randn(2, num_anchors, h, w, generator=g) for h, w in SIZES]
    return cls, reg, ctr


def samples(empty: tuple[int, ...] = ()) -> list[DetDataSample]:
    out = []
    for i, ((boxes, labels), meta) in enumerate(zip(GTS, METAS)):
        s = DetDataSample(metainfo=meta)
        s.gt_instances = (InstanceData(bboxes=torch.zeros(0, 4),
                                       labels=torch.zeros(0, dtype=torch.long))
                          if i in empty else InstanceData(bboxes=boxes, labels=labels))
        out.append(s)
    return out


# ---- scalar helpers of the references ------------------------------------------------------------

def hand_anchors(ratios) -> list[list[tuple[int, int, int, list[float]]]]:
    """Per level, (y, x, a, xyxy) in mmdet's order: location-major, anchors of a location last.
    Side = stride * octave_base_scale, h / w = ratio, centred on (x * stride, y * stride)."""
    levels = []
    for stride, (h, w) in zip(STRIDES, SIZES):
        size = stride * OCTAVE_BASE_SCALE
        level = []
        for y in range(h):
            for x in range(w):
                for a, r in enumerate(ratios):
                    aw, ah = size / math.sqrt(r), size * math.sqrt(r)
                    cx, cy = x * stride, y * stride
                    level.append((y, x, a, [cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2]))
        levels.append(level)
    return levels


def is_valid(y: int, x: int, stride: int, pad_shape) -> bool:
    return y < math.ceil(pad_shape[0] / stride) and x < math.ceil(pad_shape[1] / stride)


def decode(anchor: list[float], delta: list[float]) -> list[float]:
    """mmdet's delta2bbox with means 0 and ATSS's stds, one box."""
    dx, dy, dw, dh = (d * s for d, s in zip(delta, STDS))
    clip = abs(math.log(16 / 1000))
    dw, dh = max(-clip, min(clip, dw)), max(-clip, min(clip, dh))
    pw, ph = anchor[2] - anchor[0], anchor[3] - anchor[1]
    px, py = anchor[0] + pw / 2, anchor[1] + ph / 2
    gx, gy, gw, gh = px + pw * dx, py + ph * dy, pw * math.exp(dw), ph * math.exp(dh)
    return [gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2]


def centerness(anchor: list[float], gt: list[float]) -> float:
    cx, cy = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
    lft, top, rgt, bot = cx - gt[0], cy - gt[1], gt[2] - cx, gt[3] - cy
    return math.sqrt(min(lft, rgt) / max(lft, rgt) * min(top, bot) / max(top, bot))


def iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0   # torchvision's 0 / 0 = NaN suppresses nothing


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


# ---- 1. centerness targets -----------------------------------------------------------------------

def test_centerness_target_hand_computed():
    anchors = torch.tensor([[3., 3., 7., 7.],        # centre (5, 5)
                            [0., 6., 4., 10.],       # centre (2, 8)
                            [4., 4., 6., 6.],        # centre (5, 5), the box's centre
                            [11., 40., 19., 60.]])   # centre (15, 50), not square
    gts = torch.tensor([[0., 0., 10., 20.],          # l = r = 5, t 5 b 15   -> sqrt(1/3)
                        [0., 0., 10., 10.],          # l 2 r 8, t 8 b 2      -> sqrt(1/16)
                        [0., 0., 10., 10.],          # centred               -> 1
                        [10., 20., 30., 60.]])       # l 5 r 15, t 30 b 10   -> sqrt(1/9)
    expected = torch.tensor([math.sqrt(1 / 3), 0.25, 1.0, 1 / 3])
    torch.testing.assert_close(centerness_target(anchors, gts), expected)


def test_level_sums_per_level_and_in_graph():
    pred = torch.randn(5, requires_grad=True)
    sums = level_sums(torch.tensor([1., 2., 3.]), torch.tensor([0, 1, 1]), 3, 2.0, pred)
    assert [s.item() for s in sums] == [0.5, 2.5, 0.0]
    assert all(s.grad_fn is not None for s in sums)


# ---- 2. layout and forward -----------------------------------------------------------------------

def mmdet_atss_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """mmdetection's ATSSHead(num_classes=80, in_channels=256): 4 GN convs per branch (no conv
    bias), 3x3 predictors for 1 anchor per location, one Scale per stride."""
    shapes = {}
    for branch in ('cls_convs', 'reg_convs'):
        for i in range(4):
            shapes[f'{branch}.{i}.conv.weight'] = (256, 256, 3, 3)
            shapes[f'{branch}.{i}.gn.weight'] = (256,)
            shapes[f'{branch}.{i}.gn.bias'] = (256,)
    for name, out in (('atss_cls', 80), ('atss_reg', 4), ('atss_centerness', 1)):
        shapes[f'{name}.weight'] = (out, 256, 3, 3)
        shapes[f'{name}.bias'] = (out,)
    for i in range(5):
        shapes[f'scales.{i}.scale'] = ()
    return shapes


def test_state_dict_matches_mmdet_and_init():
    head = ATSSHead(num_classes=80, in_channels=256)
    got = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    expected = mmdet_atss_state_dict_shapes()
    assert len(expected) == 35
    assert got == expected
    head.init_weights()
    bias = -math.log((1 - 0.01) / 0.01)
    torch.testing.assert_close(head.atss_cls.bias, torch.full((80,), bias))
    assert (head.atss_reg.bias == 0).all() and (head.atss_centerness.bias == 0).all()
    for w in (head.atss_cls.weight, head.cls_convs[0].conv.weight, head.reg_convs[3].conv.weight):
        w = w.detach()
        assert 0.009 < float(w.std()) < 0.011 and abs(float(w.mean())) < 1e-3
    assert all(s.scale.item() == 1.0 for s in head.scales)


@pytest.mark.parametrize('ratios', [(1.0,), (0.5, 1.0, 2.0)])
def test_forward_shapes_and_per_level_scale(ratios):
    head = make_head(ratios)
    a = len(ratios)
    x = feats()
    cls_scores, bbox_preds, centernesses = head(x)
    assert [tuple(c.shape) for c in cls_scores] == [(2, a * C, 8, 8), (2, a * C, 4, 4)]
    assert [tuple(b.shape) for b in bbox_preds] == [(2, a * 4, 8, 8), (2, a * 4, 4, 4)]
    assert [tuple(c.shape) for c in centernesses] == [(2, a, 8, 8), (2, a, 4, 4)]
    # each level's Scale multiplies that level's box offsets only
    with torch.no_grad():
        head.scales[1].scale.fill_(3.0)
    _, scaled, scaled_ctr = head(x)
    torch.testing.assert_close(scaled[0], bbox_preds[0])
    torch.testing.assert_close(scaled[1], bbox_preds[1] * 3)
    torch.testing.assert_close(scaled_ctr[1], centernesses[1])
    assert bbox_preds[1].abs().sum() > 0


# ---- 3. losses -----------------------------------------------------------------------------------

def reference_losses(cls_scores, bbox_preds, centernesses, batch, ratios):
    """mmdet's ATSSHead.loss_by_feat, written out: per image ATSSAssigner on the image's valid
    anchors with its per-level counts, then per level and image the focal, centerness-weighted
    GIoU (loss_weight 2) and centerness BCE terms; cls and centerness / sum of max(pos_i, 1),
    bbox / max(sum of all centerness targets, 1)."""
    anchors = hand_anchors(ratios)
    assigner = ATSSAssigner(topk=9)
    num_levels = len(anchors)
    cls_sum, box_sum, ctr_sum = [0.0] * num_levels, [0.0] * num_levels, [0.0] * num_levels
    avg_factor, ctr_target_sum, pos_per_level = 0, 0.0, [0] * num_levels
    for b, sample in enumerate(batch):
        gt = sample.gt_instances
        gt_boxes, gt_labels = gt.bboxes.tolist(), gt.labels.tolist()
        valid = [[rec for rec in level if is_valid(rec[0], rec[1], stride, sample.pad_shape)]
                 for level, stride in zip(anchors, STRIDES)]
        priors = torch.tensor([rec[3] for level in valid for rec in level])
        result = assigner.assign(InstanceData(priors=priors), [len(v) for v in valid], gt, None)
        gt_inds = result.gt_inds.tolist()
        avg_factor += max(sum(g > 0 for g in gt_inds), 1)
        k = 0
        for lvl, level in enumerate(valid):
            cls_l, reg_l = cls_scores[lvl][b].tolist(), bbox_preds[lvl][b].tolist()
            ctr_l = centernesses[lvl][b].tolist()
            logits, onehots = [], []                     # every valid anchor of the level
            boxes, targets, ctr_logits, ctr_targets = [], [], [], []   # its positives
            for y, x, a, anchor in level:
                gi = gt_inds[k]
                k += 1
                logits.append([cls_l[a * C + c][y][x] for c in range(C)])
                onehots.append([float(gi > 0 and gt_labels[gi - 1] == c) for c in range(C)])
                if gi > 0:
                    boxes.append(decode(anchor, [reg_l[a * 4 + j][y][x] for j in range(4)]))
                    targets.append(gt_boxes[gi - 1])
                    ctr_logits.append(ctr_l[a][y][x])
                    ctr_targets.append(centerness(anchor, gt_boxes[gi - 1]))
            f64 = dict(dtype=torch.float64)
            cls_sum[lvl] += float(sigmoid_focal_loss(torch.tensor(logits, **f64),
                                                     torch.tensor(onehots, **f64), alpha=0.25,
                                                     gamma=2, reduction='none').sum())
            if not boxes:
                continue
            pos_per_level[lvl] += len(boxes)
            weights = torch.tensor(ctr_targets, **f64)
            giou = generalized_box_iou_loss(torch.tensor(boxes, **f64),
                                            torch.tensor(targets, **f64), reduction='none')
            box_sum[lvl] += float((2.0 * giou * weights).sum())
            ctr_sum[lvl] += float(F.binary_cross_entropy_with_logits(
                torch.tensor(ctr_logits, **f64), weights, reduction='sum'))
            ctr_target_sum += float(weights.sum())
        assert k == len(gt_inds)
    return (dict(loss_cls=[v / avg_factor for v in cls_sum],
                 loss_bbox=[v / max(ctr_target_sum, 1.0) for v in box_sum],
                 loss_centerness=[v / avg_factor for v in ctr_sum]), pos_per_level)


def test_hand_anchors_and_valid_flags_match_the_generator():
    for ratios in [(1.0,), (0.5, 1.0, 2.0)]:
        head = make_head(ratios)
        got = head.prior_generator.grid_priors(SIZES)
        for level, (g, stride) in enumerate(zip(got, STRIDES)):
            ref = hand_anchors(ratios)[level]
            torch.testing.assert_close(g, torch.tensor([rec[3] for rec in ref]))
            flags = head.prior_generator.valid_flags(SIZES, METAS[1]['pad_shape'])[level]
            assert flags.tolist() == [is_valid(y, x, stride, METAS[1]['pad_shape'])
                                      for y, x, _, _ in ref]
            assert 0 < int(flags.sum()) < len(ref)


@pytest.mark.parametrize('ratios, empty', [((1.0,), ()), ((0.5, 1.0, 2.0), ()), ((1.0,), (1,))])
def test_loss_by_feat_equals_mmdet_reference(ratios, empty):
    head = make_head(ratios)
    outs = head_outputs(len(ratios), seed=1)
    outs = tuple([m.requires_grad_() for m in maps] for maps in outs)
    batch = samples(empty)
    losses = head.loss_by_feat(*outs, batch)
    expected, pos_per_level = reference_losses(*outs, batch, ratios)
    assert all(n > 0 for n in pos_per_level), pos_per_level   # both levels have positives
    assert set(losses) == {'loss_cls', 'loss_bbox', 'loss_centerness'}
    for key, values in expected.items():
        assert len(losses[key]) == 2
        got = [v.item() for v in losses[key]]
        assert got == pytest.approx(values, rel=1e-5, abs=1e-7), key
        assert all(v > 0 for v in values), key
    total = sum(sum(v) for v in losses.values())
    total.backward()
    for maps in outs:
        assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in maps)


def test_loss_equals_loss_by_feat_of_forward():
    head = make_head()
    x = feats(2)
    losses = head.loss(x, samples())
    direct = head.loss_by_feat(*head(x), samples())
    for key in losses:
        torch.testing.assert_close(torch.stack(losses[key]), torch.stack(direct[key]))


def test_loss_without_any_gt():
    head = make_head()
    x = tuple(f.requires_grad_() for f in feats(3))
    losses = head.loss(x, samples(empty=(0, 1)))
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses['loss_cls'])
    for key in ('loss_bbox', 'loss_centerness'):
        assert all(v.item() == 0 and v.grad_fn is not None for v in losses[key]), key
    sum(sum(v) for v in losses.values()).backward()
    assert head.atss_cls.weight.grad.abs().sum() > 0
    assert head.atss_reg.weight.grad is not None and (head.atss_reg.weight.grad == 0).all()
    assert head.atss_centerness.weight.grad is not None
    assert (head.atss_centerness.weight.grad == 0).all()


# ---- 4. detections -------------------------------------------------------------------------------

def reference_detections(cls_scores, bbox_preds, centernesses, metas, recipe, ratios):
    """Per image: per level every (anchor, class) with p > score_thr, best nms_pre; decode, clip,
    p * sigmoid(centerness), drop small (measured in the original image when size_frame is
    'original'), greedy per-class NMS, max_per_img best; boxes in the network input."""
    anchors = hand_anchors(ratios)
    results, stats = [], dict(cut=0, small=0, suppressed=0, capped=0)
    for b, meta in enumerate(metas):
        h, w = meta['img_shape']
        candidates = []
        for lvl, level in enumerate(anchors):
            cls_l = cls_scores[lvl][b].tolist()
            pairs = [(sigmoid(cls_l[a * C + c][y][x]), lvl, y, x, a, c, anchor)
                     for y, x, a, anchor in level for c in range(C)]
            pairs = sorted((p for p in pairs if p[0] > recipe.score_thr), key=lambda p: -p[0])
            if 0 <= recipe.nms_pre < len(pairs):
                stats['cut'] += 1
                pairs = pairs[:recipe.nms_pre]
            candidates += pairs
        dets = []
        for prob, lvl, y, x, a, c, anchor in candidates:
            box = decode(anchor, bbox_preds[lvl][b, a * 4:(a + 1) * 4, y, x].tolist())
            box = [min(max(v, 0.0), lim) for v, lim in zip(box, (w, h, w, h))]
            score = prob * sigmoid(float(centernesses[lvl][b, a, y, x]))
            sx, sy = meta['scale_factor'] if recipe.size_frame == 'original' else (1.0, 1.0)
            if recipe.min_bbox_size >= 0 and not ((box[2] - box[0]) / sx > recipe.min_bbox_size
                                                  and (box[3] - box[1]) / sy
                                                  > recipe.min_bbox_size):
                stats['small'] += 1
                continue
            dets.append((score, c, box))
        kept = []
        for score, c, box in sorted(dets, key=lambda d: -d[0]):
            if any(kc == c and iou(kb, box) > recipe.nms.iou_threshold for _, kc, kb in kept):
                stats['suppressed'] += 1
            else:
                kept.append((score, c, box))
        if len(kept) > recipe.max_per_img:
            stats['capped'] += 1
        results.append(kept[:recipe.max_per_img])
    return results, stats


PREDICT_CASES = [
    # size_frame, ratios, score_thr, nms_pre, min_bbox_size, max_per_img, iou
    ('input', (0.5, 1.0, 2.0), 0.3, 10, 2.0, 15, 0.5),
    ('original', (0.5, 1.0, 2.0), 0.3, 10, 2.0, 15, 0.5),
    ('original', (1.0,), 0.0, -1, -1, 1000, 0.6),
    ('input', (1.0,), 0.75, 1000, 0, 100, 0.3),
    ('original', (1.0,), 0.6, 1000, 0, 6, 0.3),
]


@pytest.mark.parametrize('size_frame, ratios, score_thr, nms_pre, min_size, max_per_img, iou_thr',
                         PREDICT_CASES)
def test_predict_by_feat_equals_brute_force(size_frame, ratios, score_thr, nms_pre, min_size,
                                            max_per_img, iou_thr):
    head = make_head(ratios)
    cls_scores, bbox_preds, centernesses = head_outputs(len(ratios), seed=4)
    recipe = DenseDetectionRecipe(nms_pre=nms_pre, min_bbox_size=min_size, score_thr=score_thr,
                                  nms=NMSConfig(iou_threshold=iou_thr), max_per_img=max_per_img,
                                  size_frame=size_frame)
    got = head.predict_by_feat(cls_scores, bbox_preds, centernesses, METAS, recipe)
    expected, stats = reference_detections(cls_scores, bbox_preds, centernesses, METAS, recipe,
                                           ratios)
    # the knobs under test really acted on this input
    assert stats['suppressed'] > 0
    assert (stats['cut'] > 0) == (0 <= nms_pre < 64 * len(ratios) * C)
    assert (stats['small'] > 0) == (min_size >= 0)   # 0 drops clipped-flat boxes
    assert (stats['capped'] > 0) == (max_per_img < 100)
    assert len(got) == 2
    for res, ref in zip(got, expected):
        assert len(res) == len(ref) > 0
        order = res.scores.argsort(descending=True)
        torch.testing.assert_close(res.scores[order], torch.tensor([d[0] for d in ref]),
                                   rtol=1e-5, atol=1e-6)
        assert res.labels[order].tolist() == [d[1] for d in ref]
        assert res.labels.dtype == torch.long
        torch.testing.assert_close(res.bboxes[order], torch.tensor([d[2] for d in ref]),
                                   rtol=1e-5, atol=1e-4)


def test_predict_uses_test_cfg_and_handles_no_candidates():
    head = make_head()
    x = feats(5)
    got = head.predict(x, samples())
    expected = head.predict_by_feat(*head(x), METAS, DenseDetectionRecipe.from_cfg(
        TEST_CFG, 'test_cfg'))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.bboxes, e.bboxes)
        torch.testing.assert_close(g.scores, e.scores)
    nothing = head.predict_by_feat(*head_outputs(1, seed=6), METAS,
                                   DenseDetectionRecipe(score_thr=1.0))
    assert all(r.bboxes.shape == (0, 4) and len(r.scores) == 0 for r in nothing)


# ---- 5. configuration ----------------------------------------------------------------------------

def test_config_errors_and_registry():
    with pytest.raises(KeyError, match='assigner'):
        make_head(train_cfg=dict(allowed_border=-1, pos_weight=-1, debug=False))
    # mmdet's default sampler is the PseudoSampler; any other is used as given
    assert isinstance(make_head().train_recipe.sampler, PseudoSampler)
    sampled = make_head(train_cfg=dict(TRAIN_CFG, sampler=dict(type='RandomSampler', num=256,
                                                               pos_fraction=0.5)))
    assert isinstance(sampled.train_recipe.sampler, RandomSampler)
    with pytest.raises(ValueError, match='use_sigmoid'):
        make_head(loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))
    with pytest.raises(KeyError, match='score_th'):
        make_head(test_cfg=dict(TEST_CFG, score_th=0.05))
    head = MODELS.build(dict(type='ATSSHead', num_classes=3, in_channels=8, feat_channels=8,
                             stacked_convs=1, norm_cfg=dict(type='GN', num_groups=4),
                             anchor_generator=dict(type='AnchorGenerator', ratios=[1.0],
                                                   octave_base_scale=2, scales_per_octave=1,
                                                   strides=STRIDES),
                             train_cfg=TRAIN_CFG, test_cfg=TEST_CFG))
    assert isinstance(head, ATSSHead) and head.atss_cls.out_channels == 3
    assert head(tuple(torch.randn(1, 8, h, w) for h, w in SIZES))[0][1].shape == (1, 3, 4, 4)
