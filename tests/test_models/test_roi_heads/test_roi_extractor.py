"""SingleRoIExtractor: the FPN level formula on hand-picked scales, and pooled features equal to
torchvision's roi_align on the chosen level."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import roi_align

from rcnn_det.models.roi_heads import SingleRoIExtractor
from rcnn_det.models.roi_heads.roi_extractors import map_roi_levels
from rcnn_det.registry import MODELS

STRIDES = [4, 8, 16, 32]


def square_rois(sides: list[float], image: int = 0) -> torch.Tensor:
    return torch.tensor([[image, 3., 5., 3. + s, 5. + s] for s in sides])


def test_map_roi_levels_hand_picked_scales():
    rois = square_rois([10, 111, 112, 223.9, 224, 447, 448, 1000])
    assert map_roi_levels(rois, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert map_roi_levels(rois, 3).tolist() == [0, 0, 1, 1, 2, 2, 2, 2]
    # the scale is sqrt(w * h): a 56 x 224 box has scale 112
    assert map_roi_levels(torch.tensor([[0., 0., 0., 56., 224.]]), 4).tolist() == [1]
    assert map_roi_levels(torch.tensor([[0., 0., 0., 224., 55.]]), 4).tolist() == [0]
    # finest_scale moves the boundaries: with 28, scale 56 -> level 1
    assert map_roi_levels(square_rois([55, 56]), 4, finest_scale=28).tolist() == [0, 1]


def test_map_roi_levels_formula_on_random_rois():
    g = torch.Generator().manual_seed(0)
    wh = torch.rand(200, 2, generator=g) * 900 + 1
    rois = torch.cat([torch.zeros(200, 3), wh], 1)
    expected = [min(max(math.floor(math.log2(math.sqrt(w * h) / 56 + 1e-6)), 0), 3)
                for w, h in wh.tolist()]
    assert map_roi_levels(rois, 4).tolist() == expected


def make_extractor(aligned: bool = True, sampling_ratio: int = 0) -> SingleRoIExtractor:
    return MODELS.build(dict(type='SingleRoIExtractor',
                             roi_layer=dict(type='RoIAlign', output_size=7,
                                            sampling_ratio=sampling_ratio, aligned=aligned),
                             out_channels=2, featmap_strides=STRIDES))


def pyramid(batch: int = 2, size: int = 512, seed: int = 0, grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, 2, size // s, size // s, generator=g).requires_grad_(grad)
                 for s in STRIDES)


@pytest.mark.parametrize('aligned, sampling_ratio', [(True, 0), (False, 2)])
def test_features_equal_torchvision_roi_align_on_chosen_level(aligned, sampling_ratio):
    extractor = make_extractor(aligned, sampling_ratio)
    feats = pyramid()
    rois = torch.cat([square_rois([20, 150, 300, 480]), square_rois([60.5, 230], image=1)])
    rois[:, 1:] += torch.arange(rois.shape[0])[:, None] * 3.3   # not on the pixel grid
    out = extractor(feats, rois)
    assert out.shape == (6, 2, 7, 7)
    levels = [0, 1, 2, 3, 0, 2]
    for i, level in enumerate(levels):
        expected = roi_align(feats[level], rois[i:i + 1], (7, 7), 1 / STRIDES[level],
                             sampling_ratio, aligned)
        torch.testing.assert_close(out[i:i + 1], expected)
    # and not equal to pooling from a neighbouring level
    wrong = roi_align(feats[1], rois[:1], (7, 7), 1 / STRIDES[1], sampling_ratio, aligned)
    assert not torch.allclose(out[:1], wrong)


def test_unused_levels_stay_in_the_graph():
    extractor = make_extractor()
    feats = pyramid(batch=1, size=256, grad=True)
    out = extractor(feats, square_rois([20, 30]))               # both on level 0
    out.sum().backward()
    assert feats[0].grad.abs().sum() > 0
    for f in feats[1:]:
        assert f.grad is not None and (f.grad == 0).all()


def test_single_level_and_empty_rois():
    extractor = MODELS.build(dict(type='SingleRoIExtractor',
                                  roi_layer=dict(type='RoIAlign', output_size=(3, 4)),
                                  out_channels=2, featmap_strides=[16]))
    feat = torch.randn(1, 2, 10, 10)
    rois = square_rois([300, 40])
    torch.testing.assert_close(extractor((feat,), rois),
                               roi_align(feat, rois, (3, 4), 1 / 16, 0, True))
    empty = make_extractor()(pyramid(batch=1, size=128), torch.zeros(0, 5))
    assert empty.shape == (0, 2, 7, 7)
