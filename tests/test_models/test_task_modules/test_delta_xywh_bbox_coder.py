"""DeltaXYWHBBoxCoder: round trips, torchvision's BoxCoder, clipping, the dw clamp, (K, 4C)."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from rcnn_det.models.task_modules import DeltaXYWHBBoxCoder, bbox2delta, delta2bbox
from rcnn_det.registry import TASK_UTILS


def random_boxes(n: int, generator: torch.Generator, size: float = 100.) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize('means, stds', [((0., 0., 0., 0.), (1., 1., 1., 1.)),
                                         ((0., 0., 0., 0.), (0.1, 0.1, 0.2, 0.2)),
                                         ((0.1, -0.2, 0.05, 0.), (0.5, 0.3, 0.2, 0.7))])
def test_round_trip(means, stds):
    g = torch.Generator().manual_seed(0)
    priors, gts = random_boxes(200, g), random_boxes(200, g)
    coder = DeltaXYWHBBoxCoder(target_means=means, target_stds=stds)
    deltas = coder.encode(priors, gts)
    assert deltas.shape == (200, 4)
    decoded = coder.decode(priors, deltas)
    torch.testing.assert_close(decoded, gts, rtol=0, atol=1e-3)


def test_encode_hand_computed():
    prior = torch.tensor([[0., 0., 10., 20.]])       # centre (5, 10), w 10, h 20
    gt = torch.tensor([[2., 4., 22., 24.]])          # centre (12, 14), w 20, h 20
    expected = torch.tensor([[7 / 10, 4 / 20, math.log(2.), 0.]])
    torch.testing.assert_close(bbox2delta(prior, gt), expected)
    stds = (0.1, 0.1, 0.2, 0.2)
    torch.testing.assert_close(bbox2delta(prior, gt, stds=stds),
                               expected / torch.tensor(stds))
    means = (0.5, 0., 0., 1.)
    torch.testing.assert_close(bbox2delta(prior, gt, means=means),
                               expected - torch.tensor(means))


@pytest.mark.parametrize('weights', [(10., 10., 5., 5.), (1., 1., 1., 1.)])
def test_equals_torchvision_box_coder(weights):
    g = torch.Generator().manual_seed(1)
    priors, gts = random_boxes(300, g), random_boxes(300, g)
    tv = BoxCoder(weights=weights)
    coder = DeltaXYWHBBoxCoder(target_stds=[1 / w for w in weights])
    expected = tv.encode_single(gts, priors)
    torch.testing.assert_close(coder.encode(priors, gts), expected, rtol=1e-5, atol=1e-5)
    # Large deltas too, so that the clamp at log(1000/16) is exercised. torchvision clamps dw, dh
    # only from above, mmdet (and rcnn_det) from both sides: keep dw, dh above -log(1000/16) here.
    deltas = torch.randn(300, 4, generator=g) * 3 * torch.tensor(weights)
    deltas[:, 2:] = deltas[:, 2:].clamp(min=-math.log(1000 / 16) * weights[2] + 1e-3)
    assert (deltas[:, 2:] / weights[2] > math.log(1000 / 16)).any()
    expected_boxes = tv.decode_single(deltas, priors)
    torch.testing.assert_close(coder.decode(priors, deltas), expected_boxes,
                               rtol=1e-5, atol=1e-3)


def test_clip_to_per_image_max_shapes():
    """mmdet's batched max_shape: boxes (B, N, 4) each clipped to its image's (h, w)."""
    coder = DeltaXYWHBBoxCoder()
    priors = torch.tensor([[[10., 10., 60., 40.]], [[10., 10., 60., 40.]]])    # (B, 1, 4)
    out = coder.decode(priors, torch.zeros(2, 1, 4), max_shape=torch.tensor([[30, 50], [80, 20]]))
    assert out.tolist() == [[[10., 10., 50., 30.]], [[10., 10., 20., 40.]]]
    no_clip = DeltaXYWHBBoxCoder(clip_border=False)
    assert torch.equal(no_clip.decode(priors, torch.zeros(2, 1, 4),
                                      max_shape=torch.tensor([[30, 50], [80, 20]])), priors)


def test_clip_to_max_shape():
    coder = DeltaXYWHBBoxCoder()
    priors = torch.tensor([[-5., -5., 30., 60.], [10., 10., 20., 20.]])
    deltas = torch.zeros(2, 4)
    out = coder.decode(priors, deltas, max_shape=(50, 25))        # (h, w)
    torch.testing.assert_close(out, torch.tensor([[0., 0., 25., 50.], [10., 10., 20., 20.]]))
    no_clip = DeltaXYWHBBoxCoder(clip_border=False)
    torch.testing.assert_close(no_clip.decode(priors, deltas, max_shape=(50, 25)), priors)


def test_dw_dh_clamped_at_log_1000_over_16():
    coder = DeltaXYWHBBoxCoder()
    prior = torch.tensor([[0., 0., 16., 16.]])                    # centre (8, 8), side 16
    out = coder.decode(prior, torch.tensor([[0., 0., 10., -10.]]))
    w, h = 16 * 1000 / 16, 16 * 16 / 1000
    torch.testing.assert_close(out, torch.tensor([[8 - w / 2, 8 - h / 2, 8 + w / 2, 8 + h / 2]]),
                               rtol=1e-5, atol=1e-4)
    # a delta just below the clamp is not touched
    d = math.log(1000 / 16) - 0.01
    out = coder.decode(prior, torch.tensor([[0., 0., d, 0.]]))
    torch.testing.assert_close(out[0, 2] - out[0, 0], torch.tensor(16 * math.exp(d)))
    # add_ctr_clamp: centre shift clamped to +-ctr_clamp pixels, dw only from above
    ctr = DeltaXYWHBBoxCoder(add_ctr_clamp=True, ctr_clamp=32)
    out = ctr.decode(prior, torch.tensor([[100., -100., -10., 0.]]))
    w = 16 * math.exp(-10)
    torch.testing.assert_close(out, torch.tensor([[40 - w / 2, -24 - 8, 40 + w / 2, -24 + 8]]),
                               rtol=1e-5, atol=1e-4)


def test_multi_class_deltas():
    g = torch.Generator().manual_seed(2)
    num_classes = 3
    rois = random_boxes(7, g)
    deltas = torch.randn(7, 4 * num_classes, generator=g) * 0.5
    coder = DeltaXYWHBBoxCoder(target_stds=(0.1, 0.1, 0.2, 0.2))
    out = coder.decode(rois, deltas, max_shape=(80, 90))
    assert out.shape == (7, 4 * num_classes)
    for c in range(num_classes):
        torch.testing.assert_close(out[:, 4 * c:4 * c + 4],
                                   coder.decode(rois, deltas[:, 4 * c:4 * c + 4], (80, 90)))
    # leading batch dimensions: (B, K, 4) priors with (B, K, 4C) deltas
    batched = coder.decode(rois[None].expand(2, -1, -1), deltas[None].expand(2, -1, -1))
    assert batched.shape == (2, 7, 12)
    torch.testing.assert_close(batched[1], coder.decode(rois, deltas))
    # functional form equals the class form
    torch.testing.assert_close(delta2bbox(rois, deltas, stds=(0.1, 0.1, 0.2, 0.2)),
                               coder.decode(rois, deltas))


def test_empty_inputs():
    coder = DeltaXYWHBBoxCoder()
    assert coder.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert coder.decode(torch.zeros(0, 4), torch.zeros(0, 8)).shape == (0, 8)


def test_registry_build_stores_floats():
    coder = TASK_UTILS.build(dict(type='DeltaXYWHBBoxCoder', target_means=[0, 0, 0, 0],
                                  target_stds=[0.1, 0.1, 0.2, 0.2]))
    assert coder.means == (0., 0., 0., 0.) and coder.stds == (0.1, 0.1, 0.2, 0.2)
