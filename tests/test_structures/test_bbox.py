"""Box math: bbox_overlaps (iou / iof / giou, aligned and pairwise) against a Python loop, and the
small conversions (cxcywh, flip, clip, scale, bbox2roi)."""
from __future__ import annotations

import pytest
import torch

from rcnn_det.structures import (bbox2roi, bbox_cxcywh_to_xyxy, bbox_flip, bbox_overlaps,
                                 bbox_xyxy_to_cxcywh, box_area, clip_boxes, scale_boxes)

EPS = 1e-6


def loop_overlap(a: list[float], b: list[float], mode: str) -> float:
    """mmdet's definitions: IoU, IoF (over a's area), GIoU = IoU - (enclose - union) / enclose."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a if mode == 'iof' else area_a + area_b - inter
    iou = inter / max(union, EPS)
    if mode != 'giou':
        return iou
    enclose = ((max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1])))
    return iou - (enclose - union) / max(enclose, EPS)


def random_boxes(n: int, g: torch.Generator, integer: bool = False) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * 20
    wh = torch.rand(n, 2, generator=g) * 15 + 0.5
    boxes = torch.cat([xy, xy + wh], 1)
    return boxes.round() if integer else boxes


@pytest.mark.parametrize('mode', ['iou', 'iof', 'giou'])
@pytest.mark.parametrize('integer', [False, True])
def test_pairwise_against_loop(mode, integer):
    g = torch.Generator().manual_seed(0)
    a, b = random_boxes(7, g, integer), random_boxes(9, g, integer)
    out = bbox_overlaps(a, b, mode)
    assert out.shape == (7, 9)
    expected = torch.tensor([[loop_overlap(x, y, mode) for y in b.tolist()] for x in a.tolist()])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert (out == 0).any() or mode == 'giou'   # some pairs do not overlap at all


@pytest.mark.parametrize('mode', ['iou', 'iof', 'giou'])
def test_aligned_against_loop(mode):
    g = torch.Generator().manual_seed(1)
    a, b = random_boxes(11, g), random_boxes(11, g)
    out = bbox_overlaps(a, b, mode, is_aligned=True)
    assert out.shape == (11,)
    expected = torch.tensor([loop_overlap(x, y, mode) for x, y in zip(a.tolist(), b.tolist())])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, bbox_overlaps(a, b, mode).diagonal())


def test_hand_computed_values():
    a = torch.tensor([[0., 0., 10., 10.]])
    b = torch.tensor([[5., 0., 15., 10.], [20., 20., 30., 30.], [2., 2., 4., 4.]])
    assert bbox_overlaps(a, b)[0].tolist() == pytest.approx([50 / 150, 0., 4 / 100])
    assert bbox_overlaps(a, b, 'iof')[0].tolist() == pytest.approx([0.5, 0., 0.04])
    assert bbox_overlaps(b, a, 'iof')[:, 0].tolist() == pytest.approx([0.5, 0., 1.])
    # giou of disjoint boxes: 0 - (900 - 200) / 900
    assert bbox_overlaps(a, b, 'giou')[0, 1].item() == pytest.approx(-700 / 900)


@pytest.mark.parametrize('mode', ['iou', 'iof', 'giou'])
def test_empty_inputs(mode):
    boxes = torch.rand(3, 4)
    empty = torch.zeros(0, 4)
    assert bbox_overlaps(empty, boxes, mode).shape == (0, 3)
    assert bbox_overlaps(boxes, empty, mode).shape == (3, 0)
    assert bbox_overlaps(empty, empty, mode).shape == (0, 0)
    assert bbox_overlaps(empty, empty, mode, is_aligned=True).shape == (0,)


def test_unknown_mode():
    with pytest.raises(ValueError, match='mode'):
        bbox_overlaps(torch.rand(1, 4), torch.rand(1, 4), 'diou')


def test_zero_area_boxes_give_zero_not_nan():
    point = torch.tensor([[5., 5., 5., 5.]])
    line = torch.tensor([[1., 1., 1., 8.]])
    assert bbox_overlaps(point, point, is_aligned=True).tolist() == [0.]
    out = bbox_overlaps(torch.cat([point, line]), torch.cat([point, line]))
    assert not torch.isnan(out).any()
    assert out.tolist() == [[0., 0.], [0., 0.]]


def test_cxcywh_round_trip_and_area():
    boxes = torch.tensor([[0., 0., 10., 20.], [5., 6., 7., 10.]])
    cxcywh = bbox_xyxy_to_cxcywh(boxes)
    assert cxcywh.tolist() == [[5., 10., 10., 20.], [6., 8., 2., 4.]]
    torch.testing.assert_close(bbox_cxcywh_to_xyxy(cxcywh), boxes)
    assert box_area(boxes).tolist() == [200., 8.]
    assert box_area(torch.tensor([[5., 5., 3., 8.]])).tolist() == [0.]


def test_flip_clip_scale():
    boxes = torch.tensor([[2., 3., 12., 8.]])
    assert bbox_flip(boxes, (30, 40)).tolist() == [[28., 3., 38., 8.]]
    assert bbox_flip(boxes, (30, 40), 'vertical').tolist() == [[2., 22., 12., 27.]]
    assert bbox_flip(boxes, (30, 40), 'diagonal').tolist() == [[28., 22., 38., 27.]]
    with pytest.raises(ValueError):
        bbox_flip(boxes, (30, 40), 'sideways')
    out = clip_boxes(torch.tensor([[-3., 4., 50., 40.]]), (30, 40))   # (h, w)
    assert out.tolist() == [[0., 4., 40., 30.]]
    assert scale_boxes(boxes, (2., 0.5)).tolist() == [[4., 1.5, 24., 4.]]


def test_clip_boxes_per_image_shapes():
    """A (B, 2) tensor of (h, w) clips boxes (B, ..., 4) each into its own image."""
    boxes = torch.tensor([[[-5., -5., 50., 50.]], [[-5., -5., 50., 50.]]])      # (B, 1, 4)
    out = clip_boxes(boxes, torch.tensor([[30, 20], [10, 40]]))
    assert out.tolist() == [[[0., 0., 20., 30.]], [[0., 0., 40., 10.]]]
    per_class = boxes[:, :, None].expand(2, 1, 3, 4)                            # (B, 1, C, 4)
    assert clip_boxes(per_class, torch.tensor([[30, 20], [10, 40]]))[1, 0, 2].tolist() == \
        [0., 0., 40., 10.]


def test_bbox2roi():
    rois = bbox2roi([torch.tensor([[1., 2., 3., 4.]]), torch.zeros(0, 4),
                     torch.tensor([[5., 6., 7., 8.], [0., 0., 1., 1.]])])
    assert rois.tolist() == [[0., 1., 2., 3., 4.], [2., 5., 6., 7., 8.], [2., 0., 0., 1., 1.]]
