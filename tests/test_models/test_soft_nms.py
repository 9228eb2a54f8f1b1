"""Soft-NMS (``batched_soft_nms`` and ``select_detections`` with ``type='soft_nms'``) against a
plain Python transcription of mmcv's CPU kernel, and ``NMSConfig``'s soft-NMS fields."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rcnn_det.models.post_processing import Candidates, batched_soft_nms, select_detections
from rcnn_det.models.recipes import NMSConfig


def kernel_reference(boxes, scores, groups, iou_thr, sigma, min_score, method):
    """One image, one box at a time, in mmcv's order of operations (softnms_cpu, offset 0), in
    float32. Boxes of different groups overlap by 0 (mmcv's coordinate offsets). Returns the
    kept indices in pick order and their decayed scores."""
    f32 = np.float32
    x1, y1, x2, y2 = ([f32(b[k]) for b in boxes] for k in range(4))
    sc = [f32(s) for s in scores]
    grp = list(groups)
    areas = [(x2[j] - x1[j]) * (y2[j] - y1[j]) for j in range(len(sc))]
    inds = list(range(len(sc)))
    arrays = (x1, y1, x2, y2, sc, areas, inds, grp)
    n = len(sc)
    kept_scores = []
    i = 0
    while i < n:
        best = i
        for pos in range(i + 1, n):
            if sc[best] < sc[pos]:                    # strict: the first maximum wins
                best = pos
        for arr in arrays:
            arr[i], arr[best] = arr[best], arr[i]
        kept_scores.append(sc[i])
        pos = i + 1
        while pos < n:
            if grp[pos] != grp[i]:
                ovr = f32(0)
            else:
                w = max(f32(0), min(x2[i], x2[pos]) - max(x1[i], x1[pos]))
                h = max(f32(0), min(y2[i], y2[pos]) - max(y1[i], y1[pos]))
                inter = w * h
                ovr = inter / (areas[i] + areas[pos] - inter)
            weight = f32(1)
            if method == 'naive' and ovr >= iou_thr:
                weight = f32(0)
            elif method == 'linear' and ovr >= iou_thr:
                weight = f32(1) - ovr
            elif method == 'gaussian':
                weight = np.exp(-(ovr * ovr) / f32(sigma))
            sc[pos] = sc[pos] * weight
            if sc[pos] < min_score:                   # drop: the last box takes its place
                for arr in arrays:
                    arr[pos] = arr[n - 1]
                n -= 1
                continue
            pos += 1
        i += 1
    return inds[:n], kept_scores[:n]


def reference_batch(boxes, scores, groups, images, num_images, **kw):
    keep, kept_scores = [], []
    for b in range(num_images):
        mine = (images == b).nonzero().flatten().tolist()        # in their given order
        k, s = kernel_reference(boxes[mine].tolist(), scores[mine].tolist(),
                                groups[mine].tolist(), **kw)
        keep += [mine[j] for j in k]
        kept_scores += [float(v) for v in s]
    return keep, kept_scores


def random_candidates(seed, num=90, num_images=3, num_groups=3):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + 4 + torch.rand(num, 2, generator=g) * 20], 1)
    # ties: scores on a coarse grid, and some boxes repeated exactly
    scores = (torch.rand(num, generator=g) * 20).round() / 20 + 0.01
    boxes[1::7] = boxes[0::7][:len(boxes[1::7])]
    groups = torch.randint(0, num_groups, (num,), generator=g)
    images = torch.randint(0, num_images, (num,), generator=g)
    return boxes, scores, groups, images


CASES = [dict(method='linear', iou_thr=0.3, sigma=0.5, min_score=1e-3),
         dict(method='linear', iou_thr=0.1, sigma=0.5, min_score=0.2),
         dict(method='gaussian', iou_thr=0.3, sigma=0.5, min_score=1e-3),
         dict(method='gaussian', iou_thr=0.3, sigma=0.1, min_score=0.15),
         dict(method='naive', iou_thr=0.3, sigma=0.5, min_score=1e-3),
         dict(method='naive', iou_thr=0.6, sigma=0.5, min_score=0.3)]


@pytest.mark.parametrize('case', CASES, ids=lambda c: '-'.join(map(str, c.values())))
@pytest.mark.parametrize('seed', [0, 1])
def test_batched_soft_nms_equals_the_kernel_loop(case, seed):
    boxes, scores, groups, images = random_candidates(seed)
    keep, kept_scores = batched_soft_nms(boxes, scores, groups, images, case['iou_thr'],
                                         case['sigma'], case['min_score'], case['method'])
    ref_keep, ref_scores = reference_batch(boxes, scores, groups, images, 3, **case)
    assert keep.tolist() == ref_keep
    torch.testing.assert_close(kept_scores, torch.tensor(ref_scores), rtol=1e-6, atol=1e-7)
    # image by image, each best first, and the cases really decay and drop boxes
    assert (images[keep].diff() >= 0).all()
    for b in range(3):
        mine = kept_scores[images[keep] == b]
        assert (mine.diff() <= 0).all()
    if case['method'] == 'naive':
        assert torch.equal(kept_scores, scores[keep]) and len(keep) < len(scores)
    else:
        assert not torch.equal(kept_scores, scores[keep])
    if case['min_score'] > 0.1:
        assert len(keep) < len(scores)


def test_ties_follow_the_kernels_working_order():
    far = [[0., 0., 10., 10.], [20., 0., 30., 10.], [40., 0., 50., 10.], [60., 0., 70., 10.]]
    ones = torch.zeros(3, dtype=torch.long)
    # the pick (index 2) is swapped to the front: order [2, 1, 0], so 1 beats 0 on the tie
    keep, _ = batched_soft_nms(torch.tensor(far[:3]), torch.tensor([0.5, 0.5, 0.9]), ones,
                               ones)
    assert keep.tolist() == [2, 1, 0]
    # index 1 is dropped (it is box 0) and index 3, the last, takes its slot: 3 beats 2
    boxes = torch.tensor([far[0], far[0], far[1], far[2]])
    zeros = torch.zeros(4, dtype=torch.long)
    keep, kept = batched_soft_nms(boxes, torch.tensor([0.9, 0.5, 0.4, 0.4]), zeros, zeros,
                                  iou_threshold=0.5, method='naive')
    assert keep.tolist() == [0, 3, 2] and kept.tolist() == pytest.approx([0.9, 0.4, 0.4])
    assert keep.tolist() == reference_batch(boxes, torch.tensor([0.9, 0.5, 0.4, 0.4]), zeros,
                                            zeros, 1, iou_thr=0.5, sigma=0.5, min_score=1e-3,
                                            method='naive')[0]


def test_hand_computed_decays():
    # IoU([0,0,10,10], [0,0,10,5]) = 0.5; mmcv decays at iou >= the threshold
    boxes = torch.tensor([[0., 0., 10., 10.], [0., 0., 10., 5.]])
    scores = torch.tensor([0.9, 0.8])
    one = torch.zeros(2, dtype=torch.long)

    def run(**kw):
        keep, kept = batched_soft_nms(boxes, scores, one, one, **kw)
        return keep.tolist(), kept.tolist()

    assert run(iou_threshold=0.5, method='linear') == ([0, 1], pytest.approx([0.9, 0.4]))
    assert run(iou_threshold=0.51, method='linear') == ([0, 1], pytest.approx([0.9, 0.8]))
    assert run(method='gaussian', sigma=0.5) == ([0, 1],
                                                  pytest.approx([0.9, 0.8 * math.exp(-0.5)]))
    assert run(iou_threshold=0.5, method='naive') == ([0], pytest.approx([0.9]))
    assert run(iou_threshold=0.3, method='linear', min_score=0.41) == ([0], pytest.approx([0.9]))
    # other groups and other images are untouched
    for groups, images in (([0, 1], [0, 0]), ([0, 0], [0, 1])):
        keep, kept = batched_soft_nms(boxes, scores, torch.tensor(groups), torch.tensor(images),
                                      iou_threshold=0.1, method='naive')
        assert keep.tolist() == [0, 1] and kept.tolist() == pytest.approx([0.9, 0.8])


def test_an_images_first_pick_survives_below_min_score():
    # as in the kernel: only boxes decayed after a pick are checked against min_score
    boxes = torch.tensor([[0., 0., 10., 10.], [20., 20., 30., 30.], [0., 0., 10., 10.]])
    keep, kept = batched_soft_nms(boxes, torch.tensor([1e-4, 5e-4, 0.9]),
                                  torch.zeros(3, dtype=torch.long), torch.tensor([0, 0, 1]))
    assert keep.tolist() == [1, 2] and kept.tolist() == pytest.approx([5e-4, 0.9])


def test_empty_input_and_empty_images():
    empty = torch.zeros(0, dtype=torch.long)
    keep, kept = batched_soft_nms(torch.zeros(0, 4), torch.zeros(0), empty, empty)
    assert keep.shape == (0,) and keep.dtype == torch.long and kept.shape == (0,)
    cands = Candidates(torch.zeros(0, 4), torch.zeros(0), empty, empty, empty, 3)
    res = select_detections(cands, 2, NMSConfig(type='soft_nms'), max_per_img=5)
    assert [len(r) for r in res] == [0, 0] and res[0].bboxes.shape == (0, 4)
    # image 1 of 3 has no candidates
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]])
    res = select_detections(Candidates(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]),
                                       torch.tensor([0, 2]), torch.tensor([0, 0]), 1), 3,
                            NMSConfig(type='soft_nms'), max_per_img=5)
    assert [len(r) for r in res] == [1, 0, 1]


@pytest.mark.parametrize('method, iou_thr, max_per_img, score_thr',
                         [('linear', 0.8, 300, None), ('gaussian', 0.3, 10, 0.2),
                          ('naive', 0.5, 7, 0.05)])
def test_select_detections_with_soft_nms_end_to_end(method, iou_thr, max_per_img, score_thr):
    boxes, scores, labels, images = random_candidates(3, num=120)
    nms = NMSConfig.from_cfg(dict(type='soft_nms', iou_threshold=iou_thr, method=method),
                             'test_cfg')
    res = select_detections(Candidates(boxes, scores, labels, images, labels, 3), 3, nms,
                            max_per_img, score_thr=score_thr)
    valid = torch.ones_like(scores, dtype=torch.bool) if score_thr is None else scores > score_thr
    idx = valid.nonzero().flatten()
    keep, kept = reference_batch(boxes[idx], scores[idx], labels[idx], images[idx], 3,
                                 iou_thr=iou_thr, sigma=0.5, min_score=1e-3, method=method)
    keep, kept = idx[keep], torch.tensor(kept)
    for b, r in enumerate(res):
        mine = images[keep] == b
        expected = keep[mine][:max_per_img]
        assert torch.equal(r.bboxes, boxes[expected]) and torch.equal(r.labels, labels[expected])
        torch.testing.assert_close(r.scores, kept[mine][:max_per_img])
        assert (r.scores.diff() <= 0).all()
    assert sum(map(len, res)) > 0
    # the hard-NMS path is untouched by the soft one: same config type, same results as before
    hard = select_detections(Candidates(boxes, scores, labels, images, labels, 3), 3,
                             NMSConfig(iou_threshold=iou_thr), max_per_img, score_thr=score_thr)
    for r in hard:
        assert all(s in scores.tolist() for s in r.scores.tolist())


def test_nms_config_soft_nms_fields_and_errors():
    # mmcv's soft_nms defaults; Co-DINO's test_cfg
    assert NMSConfig(type='soft_nms') == NMSConfig('soft_nms', 0.3, 0.5, 1e-3, 'linear')
    codino = NMSConfig.from_cfg(dict(type='soft_nms', iou_threshold=0.8), 'test_cfg')
    assert (codino.iou_threshold, codino.sigma, codino.min_score, codino.method) == (
        0.8, 0.5, 1e-3, 'linear')
    assert NMSConfig.from_cfg(dict(type='soft_nms', iou_threshold=0.5, sigma=0.3, min_score=0.05,
                                   method='gaussian', split_thr=10000), 'x') == NMSConfig(
        'soft_nms', 0.5, 0.3, 0.05, 'gaussian')
    # hard NMS as before
    assert NMSConfig().iou_threshold == 0.5 and NMSConfig().type == 'nms'
    assert NMSConfig.from_cfg(dict(type='nms', iou_threshold=0.6), 'x') == NMSConfig(
        iou_threshold=0.6)
    with pytest.raises(KeyError, match="test_cfg.rcnn.nms: missing 'iou_threshold'"):
        NMSConfig.from_cfg(dict(type='nms'), 'test_cfg.rcnn')
    with pytest.raises(ValueError, match="test_cfg.nms: 'sigma' applies to type='soft_nms'"):
        NMSConfig.from_cfg(dict(type='nms', iou_threshold=0.5, sigma=0.5), 'test_cfg')
    with pytest.raises(ValueError, match="test_cfg.nms: type must be one of .*did you mean "
                                         "'soft_nms'"):
        NMSConfig.from_cfg(dict(type='softnms', iou_threshold=0.5), 'test_cfg')
    with pytest.raises(ValueError, match="type must be one of"):
        NMSConfig(type='nms_rotated')
    with pytest.raises(ValueError, match="test_cfg.nms: method must be one of"):
        NMSConfig.from_cfg(dict(type='soft_nms', method='lineal'), 'test_cfg')
    with pytest.raises(ValueError, match='sigma > 0'):
        NMSConfig(type='soft_nms', method='gaussian', sigma=0.0)
    with pytest.raises(KeyError, match="test_cfg.nms: unknown key 'min_scor'; did you mean "
                                       "'min_score'"):
        NMSConfig.from_cfg(dict(type='soft_nms', min_scor=0.1), 'test_cfg')
