"""AnchorGenerator: base anchors against torchvision and hand-computed mmdet values, grid order
against a Python loop, valid flags of a padded image, octave scales."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator

from rcnn_det.models.task_modules import AnchorGenerator
from rcnn_det.models.task_modules.prior_generators import base_anchors, grid_anchors
from rcnn_det.registry import TASK_UTILS

# torchvision's printed cell anchors for sizes (16, 32, 64), aspect ratios (0.5, 1, 2).
TORCHVISION_CELL_ANCHORS = torch.tensor([
    [-11, -6, 11, 6], [-23, -11, 23, 11], [-45, -23, 45, 23],
    [-8, -8, 8, 8], [-16, -16, 16, 16], [-32, -32, 32, 32],
    [-6, -11, 6, 11], [-11, -23, 11, 23], [-23, -45, 23, 45]], dtype=torch.float32)


def test_base_anchors_rounded_equal_torchvision_printed_values():
    anchors = base_anchors(1.0, scales=torch.tensor([16., 32., 64.]),
                           ratios=torch.tensor([.5, 1., 2.]), center=(0, 0), round_coords=True)
    torch.testing.assert_close(anchors, TORCHVISION_CELL_ANCHORS, rtol=0, atol=0)


def test_generator_rounded_base_anchors_equal_torchvision_printed_values():
    gen = AnchorGenerator(strides=[16], ratios=[0.5, 1, 2], scales=[1, 2, 4],
                          round_base_anchors=True)
    assert gen.num_base_priors == [9]
    torch.testing.assert_close(gen.base_anchors[0], TORCHVISION_CELL_ANCHORS, rtol=0, atol=0)


def test_base_anchors_equal_torchvision_cell_anchors():
    tv = TVAnchorGenerator(sizes=((16, 32, 64),), aspect_ratios=((0.5, 1.0, 2.0),))
    ours = base_anchors(1.0, torch.tensor([16., 32., 64.]), torch.tensor([.5, 1., 2.]),
                        (0, 0), round_coords=True)
    torch.testing.assert_close(ours, tv.cell_anchors[0], rtol=0, atol=0)


def test_mmdet_unrounded_base_anchors_hand_computed():
    # stride 4, scale 8 -> side 32; ratio r = h / w keeps the area: w = 32 / sqrt(r), h = 32 sqrt(r)
    gen = AnchorGenerator(strides=[4], ratios=[0.5, 1.0, 2.0], scales=[8])
    half_long, half_short = 16 * math.sqrt(2), 16 / math.sqrt(2)   # 22.6274, 11.3137
    expected = torch.tensor([[-half_long, -half_short, half_long, half_short],
                             [-16., -16., 16., 16.],
                             [-half_short, -half_long, half_short, half_long]])
    torch.testing.assert_close(gen.base_anchors[0], expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(gen.base_anchors[0][0],
                               torch.tensor([-22.6274, -11.3137, 22.6274, 11.3137]),
                               rtol=0, atol=1e-4)
    # The default anchor centre is the top-left corner of the cell (mmdet's center_offset=0).
    centred = AnchorGenerator(strides=[4], ratios=[1.0], scales=[8], center_offset=0.5)
    torch.testing.assert_close(centred.base_anchors[0], torch.tensor([[-14., -14., 18., 18.]]))


def test_scale_major_false_orders_ratios_inner():
    scales, ratios = torch.tensor([1., 2.]), torch.tensor([0.5, 2.0])
    major = base_anchors(8, scales, ratios, (0, 0), scale_major=True)
    minor = base_anchors(8, scales, ratios, (0, 0), scale_major=False)
    # scale-major: (ratio, scale) order, scales inner; otherwise (scale, ratio), ratios inner.
    for r in range(2):
        for s in range(2):
            torch.testing.assert_close(major[r * 2 + s], minor[s * 2 + r])
    widths = (major[:, 2] - major[:, 0]).tolist()
    assert widths == pytest.approx([8 * math.sqrt(2), 16 * math.sqrt(2),
                                    8 / math.sqrt(2), 16 / math.sqrt(2)], rel=1e-6)


def loop_grid(base: torch.Tensor, h: int, w: int, stride_w: float, stride_h: float):
    out = []
    for y in range(h):
        for x in range(w):
            for a in range(base.shape[0]):
                x1, y1, x2, y2 = base[a].tolist()
                out.append([x1 + x * stride_w, y1 + y * stride_h,
                            x2 + x * stride_w, y2 + y * stride_h])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


@pytest.mark.parametrize('strides, sizes', [([4, 8], [(3, 5), (2, 3)]),
                                            ([(8, 4)], [(4, 2)]),
                                            ([16], [(0, 3)])])
def test_grid_priors_location_major_against_loop(strides, sizes):
    gen = AnchorGenerator(strides=strides, ratios=[0.5, 1.0, 2.0], scales=[2, 3])
    priors = gen.grid_priors(sizes)
    assert len(priors) == len(strides)
    for level, (h, w) in enumerate(sizes):
        stride_w, stride_h = gen.strides[level]
        expected = loop_grid(gen.base_anchors[level], h, w, stride_w, stride_h)
        assert priors[level].shape == (h * w * 6, 4)
        torch.testing.assert_close(priors[level], expected)


def test_grid_priors_count_and_dtype():
    gen = AnchorGenerator(strides=[4], ratios=[0.5, 1.0, 2.0], scales=[8, 16, 32])
    (priors,) = gen.grid_priors([(200, 272)], dtype=torch.float64)
    assert priors.shape == (489600, 4) and priors.dtype == torch.float64
    # the last anchor is the last base anchor at the bottom-right location
    torch.testing.assert_close(priors[-1], gen.base_anchors[0][-1].double()
                               + torch.tensor([271 * 4, 199 * 4, 271 * 4, 199 * 4.]).double())
    with pytest.raises(ValueError, match='1 levels'):
        gen.grid_priors([(2, 2), (1, 1)])


def test_grid_priors_equal_torchvision_grid_anchors():
    sizes = ((16, 32, 64), (32, 64, 128))
    ratios = ((0.5, 1.0, 2.0),) * 2
    tv = TVAnchorGenerator(sizes=sizes, aspect_ratios=ratios)
    strides = [8, 16]
    featmaps = [(5, 7), (3, 4)]
    expected = tv.grid_anchors([list(s) for s in featmaps],
                               [[torch.tensor(s), torch.tensor(s)] for s in strides])
    gen = AnchorGenerator(strides=strides, ratios=[0.5, 1.0, 2.0], scales=[1, 2, 4],
                          base_sizes=[16, 32], round_base_anchors=True)
    ours = gen.grid_priors(featmaps)
    for level in range(2):
        torch.testing.assert_close(ours[level], expected[level], rtol=0, atol=0)


def test_grid_anchors_function_rectangular_stride():
    base = torch.tensor([[-1., -2., 1., 2.]])
    out = grid_anchors(base, (2, 2), (10., 3.))   # stride_w 10, stride_h 3
    expected = torch.tensor([[-1., -2., 1., 2.], [9., -2., 11., 2.],
                             [-1., 1., 1., 5.], [9., 1., 11., 5.]])
    torch.testing.assert_close(out, expected)


def test_valid_flags_padded_image():
    gen = AnchorGenerator(strides=[4, 8], ratios=[1.0, 2.0], scales=[8])
    # batch padded to 32x48, this image padded only to (h, w) = (18, 30)
    featmaps = [(8, 12), (4, 6)]
    flags = gen.valid_flags(featmaps, pad_shape=(18, 30))
    for (h, w), (stride, _), f in zip(featmaps, gen.strides, flags):
        assert f.dtype == torch.bool and f.shape == (h * w * 2,)
        expected = [y < math.ceil(18 / stride) and x < math.ceil(30 / stride)
                    for y in range(h) for x in range(w) for _ in range(2)]
        assert f.tolist() == expected
    # 18 / 4 -> 5 rows, 30 / 4 -> 8 columns valid at level 0
    assert int(flags[0].sum()) == 5 * 8 * 2
    # a pad shape larger than the map keeps everything valid
    assert all(f.all() for f in gen.valid_flags(featmaps, pad_shape=(1000, 1000)))


def test_octave_scales():
    gen = AnchorGenerator(strides=[8, 16], ratios=[1.0], octave_base_scale=4,
                          scales_per_octave=3)
    torch.testing.assert_close(gen.scales, torch.tensor([4., 4 * 2 ** (1 / 3), 4 * 2 ** (2 / 3)]))
    sides = (gen.base_anchors[0][:, 2] - gen.base_anchors[0][:, 0])
    torch.testing.assert_close(sides, torch.tensor([32., 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)]))
    sides1 = (gen.base_anchors[1][:, 3] - gen.base_anchors[1][:, 1])
    torch.testing.assert_close(sides1, 2 * sides)
    with pytest.raises(ValueError, match='either scales'):
        AnchorGenerator(strides=[8], ratios=[1.0], scales=[1], octave_base_scale=4,
                        scales_per_octave=3)
    with pytest.raises(ValueError, match='either scales'):
        AnchorGenerator(strides=[8], ratios=[1.0])


def test_built_from_registry_with_mmdet_config():
    gen = TASK_UTILS.build(dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0],
                                strides=[4, 8, 16, 32, 64]))
    assert gen.num_levels == 5 and gen.num_base_priors == [3] * 5
    assert gen.base_sizes == [4, 8, 16, 32, 64]
    # level 4: side 8 * 64 = 512
    torch.testing.assert_close(gen.base_anchors[4][1], torch.tensor([-256., -256., 256., 256.]))
