"""The one post-processing path (select_detections, filter_scores_and_topk) and the one
conversion to the original image (to_original_image), against brute-force references."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from mmengine.structures import InstanceData
from torchvision.ops import box_iou

import rcnn_det.models
from rcnn_det.models.post_processing import (Candidates, MaskPaste, filter_scores_and_topk,
                                             select_detections, size_scales, to_original_image,
                                             topk_pairs)
from rcnn_det.models.recipes import NMSConfig
from rcnn_det.structures import paste_masks

MODELS_ROOT = Path(rcnn_det.models.__file__).parent


def candidates(boxes, scores, labels, images, groups=None, num_groups=None):
    labels = torch.as_tensor(labels)
    groups = labels if groups is None else torch.as_tensor(groups)
    return Candidates(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores),
                      labels, torch.as_tensor(images), groups,
                      num_groups or int(groups.max()) + 1)


def test_nms_runs_inside_each_image_and_group():
    # identical boxes in different groups (or images) survive; in the same group NMS keeps one
    box = [0., 0., 10., 10.]
    far = [20., 20., 30., 30.]
    cands = candidates([box, box, box, far] * 2, [0.9, 0.8, 0.7, 0.6, 0.5, 0.95, 0.1, 0.2],
                       [0] * 8, [0, 0, 0, 0, 1, 1, 1, 1], groups=[0, 0, 1, 1] * 2, num_groups=2)
    res = select_detections(cands, 2, NMSConfig(iou_threshold=0.5), max_per_img=10)
    assert res[0].scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert res[1].scores.tolist() == pytest.approx([0.95, 0.2, 0.1])
    res = select_detections(cands, 2, NMSConfig(iou_threshold=0.5), max_per_img=2,
                            score_thr=0.3)
    assert res[0].scores.tolist() == pytest.approx([0.9, 0.7])
    assert res[1].scores.tolist() == pytest.approx([0.95])
    assert res[1].bboxes.tolist() == [box] and res[1].labels.dtype == torch.long


def test_empty_images_and_no_candidates():
    cands = candidates(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                       torch.zeros(0, dtype=torch.long), num_groups=3)
    res = select_detections(cands, 2, NMSConfig(), max_per_img=5)
    assert [len(r) for r in res] == [0, 0] and res[0].bboxes.shape == (0, 4)


def test_min_bbox_size_in_the_input_or_the_original_frame():
    boxes = [[0., 0., 10., 4.], [0., 0., 10., 8.], [50., 50., 56., 70.]]
    cands = candidates(boxes, [0.9, 0.8, 0.7], [0, 1, 2], [0, 0, 0])
    keep_all = select_detections(cands, 1, NMSConfig(), 10, min_bbox_size=-1)
    assert len(keep_all[0]) == 3
    input_frame = select_detections(cands, 1, NMSConfig(), 10, min_bbox_size=5)
    assert input_frame[0].scores.tolist() == pytest.approx([0.8, 0.7])
    # resized by (sx, sy) = (2, 0.5): sides are w / 2 and h / 0.5 in the original image
    scales = size_scales([dict(scale_factor=(2.0, 0.5))], torch.device('cpu'))
    original = select_detections(cands, 1, NMSConfig(), 10, min_bbox_size=4.5,
                                 original_scales=scales)
    assert original[0].scores.tolist() == pytest.approx([0.9, 0.8])
    # the results stay in the network input's frame
    assert original[0].bboxes.tolist() == boxes[:2]


def greedy_reference(boxes, scores, labels, images, num_images, iou_thr, max_per_img, thr):
    out = []
    for i in range(num_images):
        order = [j for j in scores.argsort(descending=True).tolist()
                 if images[j] == i and scores[j] > thr]
        kept = []
        for j in order:
            if all(labels[k] != labels[j] or box_iou(boxes[k:k + 1], boxes[j:j + 1]) <= iou_thr
                   for k in kept):
                kept.append(j)
        out.append(kept[:max_per_img])
    return out


@pytest.mark.parametrize('iou_thr, max_per_img, thr', [(0.5, 100, 0.0), (0.3, 7, 0.2),
                                                       (0.45, 15, -1.0)])
def test_select_detections_equals_greedy_per_image_per_class_nms(iou_thr, max_per_img, thr):
    g = torch.Generator().manual_seed(1)
    num = 120
    xy = torch.rand(num, 2, generator=g) * 30
    boxes = torch.cat([xy, xy + 5 + torch.rand(num, 2, generator=g) * 15], 1)
    scores = torch.rand(num, generator=g)
    labels = torch.randint(0, 3, (num,), generator=g)
    images = torch.randint(0, 2, (num,), generator=g)
    res = select_detections(Candidates(boxes, scores, labels, images, labels, 3), 2,
                            NMSConfig(iou_threshold=iou_thr), max_per_img, score_thr=thr)
    expected = greedy_reference(boxes, scores, labels, images, 2, iou_thr, max_per_img, thr)
    for r, idx in zip(res, expected):
        assert torch.equal(r.bboxes, boxes[idx]) and torch.equal(r.scores, scores[idx])
        assert torch.equal(r.labels, labels[idx])
    # the cases really exercise NMS, not only the threshold and the top-k
    uncapped = greedy_reference(boxes, scores, labels, images, 2, iou_thr, num, thr)
    assert sum(map(len, uncapped)) < int((scores > thr).sum())


def test_filter_scores_and_topk_strictly_above_threshold_best_first():
    scores = torch.tensor([[0.5, 0.2], [0.3, 0.9], [0.3001, 0.1], [0.7, 0.3]])   # (N, C)
    values, rows, labels = filter_scores_and_topk(scores, 0.3, -1)
    assert rows.tolist() == [1, 3, 0, 2] and labels.tolist() == [1, 0, 0, 0]
    torch.testing.assert_close(values, torch.tensor([0.9, 0.7, 0.5, 0.3001]))
    values, rows, labels = filter_scores_and_topk(scores, 0.3, 2)
    assert rows.tolist() == [1, 3] and labels.tolist() == [1, 0]


def test_topk_pairs_may_take_one_query_with_several_classes():
    scores = torch.tensor([[0.1, 0.8, 0.7], [0.9, 0.2, 0.3]])             # (Q, C)
    values, queries, labels = topk_pairs(scores, 3)
    assert queries.tolist() == [1, 0, 0] and labels.tolist() == [0, 1, 2]
    torch.testing.assert_close(values, torch.tensor([0.9, 0.8, 0.7]))
    assert len(topk_pairs(scores, 100)[0]) == 6


def test_to_original_image_divides_by_the_scale_factor_and_pastes_masks():
    meta = dict(scale_factor=(2.0, 0.5), ori_shape=(40, 30), img_shape=(20, 60))
    boxes = torch.tensor([[4., 2., 40., 12.], [10., 4., 30., 18.]])
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 7, 7, generator=g)

    def results():
        return [InstanceData(bboxes=boxes.clone(), scores=torch.tensor([0.9, 0.5]),
                             labels=torch.tensor([1, 0]), mask_probs=probs.clone())]

    paste = MaskPaste(thr_binary=0.4)
    out = to_original_image(results(), [meta], True, paste)[0]
    expected = boxes / torch.tensor([2.0, 0.5, 2.0, 0.5])
    assert torch.equal(out.bboxes, expected) and 'mask_probs' not in out
    assert torch.equal(out.masks, paste_masks(probs, expected, (40, 30), 0.4))
    kept = to_original_image(results(), [meta], False, paste)[0]
    assert torch.equal(kept.bboxes, boxes) and kept.masks.shape == (2, 20, 60)
    assert torch.equal(kept.masks, paste_masks(probs, boxes, (20, 60), 0.4))
    with pytest.raises(ValueError, match='MaskPaste'):
        to_original_image(results(), [meta], True)


def test_one_module_runs_nms_and_no_head_reads_scale_factor():
    nms_users = sorted(str(p.relative_to(MODELS_ROOT)) for p in MODELS_ROOT.rglob('*.py')
                       if re.search(r'import[^\n]*\bbatched_nms\b', p.read_text()))
    assert nms_users == ['post_processing.py']
    read = re.compile(r"""(\[\s*['"]scale_factor['"]\s*\]|get\(\s*['"]scale_factor)""")
    heads = [p for folder in ('dense_heads', 'roi_heads') for p in
             (MODELS_ROOT / folder).rglob('*.py')]
    assert len(heads) > 5
    readers = [str(p.relative_to(MODELS_ROOT)) for p in heads if read.search(p.read_text())]
    assert readers == []
