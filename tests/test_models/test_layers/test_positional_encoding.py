"""SinePositionalEncoding against a per-pixel loop of its definition (mmdet's formula)."""
from __future__ import annotations

import math

import pytest
import torch

from rcnn_det.registry import MODELS


def reference(mask: torch.Tensor, num_feats: int, temperature: float, normalize: bool,
              scale: float, eps: float, offset: float) -> torch.Tensor:
    """Loop over images, pixels and channels."""
    b, h, w = mask.shape
    out = torch.zeros(b, 2 * num_feats, h, w, dtype=torch.float64)
    for n in range(b):
        valid = (~mask[n]).double()
        for i in range(h):
            for j in range(w):
                y = valid[:i + 1, j].sum().item()
                x = valid[i, :j + 1].sum().item()
                if normalize:
                    y = (y + offset) / (valid[:, j].sum().item() + eps) * scale
                    x = (x + offset) / (valid[i, :].sum().item() + eps) * scale
                for k in range(num_feats):
                    freq = temperature ** (2 * (k // 2) / num_feats)
                    trig = math.sin if k % 2 == 0 else math.cos
                    out[n, k, i, j] = trig(y / freq)
                    out[n, num_feats + k, i, j] = trig(x / freq)
    return out


def padded_mask() -> torch.Tensor:
    """Two images on a 5 x 7 canvas: 5 x 7 (no padding) and 3 x 4 (padding bottom/right)."""
    mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    mask[1, 3:, :] = True
    mask[1, :, 4:] = True
    return mask


@pytest.mark.parametrize('kwargs', [
    dict(num_feats=8),                                                   # DETR's raw counts
    dict(num_feats=8, normalize=True, offset=-0.5),                      # Deformable DETR
    dict(num_feats=6, normalize=True, temperature=20, scale=3.0, eps=1e-3)])
def test_matches_per_pixel_reference(kwargs):
    module = MODELS.build(dict(type='SinePositionalEncoding', **kwargs))
    args = dict(dict(temperature=10000, normalize=False, scale=2 * math.pi, eps=1e-6,
                     offset=0.), **kwargs)
    mask = padded_mask()
    out = module(mask)
    assert out.shape == (2, 2 * kwargs['num_feats'], 5, 7) and out.dtype == torch.float32
    # padded pixels hold huge angles ((count + offset) / eps) that only float64 computes
    # stably; nothing reads them, so compare the image pixels
    valid = ~mask[:, None].expand_as(out)
    torch.testing.assert_close(out.double()[valid], reference(mask, **args)[valid], atol=1e-5,
                               rtol=1e-5)


def test_normalised_positions_span_each_image_not_the_canvas():
    module = MODELS.build(dict(type='SinePositionalEncoding', num_feats=2, normalize=True,
                               offset=-0.5))
    out = module(padded_mask())
    # channel 0 = sin(y), y = (row + 0.5) / valid_rows * 2 pi at the first frequency (1)
    for n, rows in ((0, 5), (1, 3)):
        expected = torch.sin((torch.arange(rows) + 0.5) / (rows + 1e-6) * 2 * math.pi)
        torch.testing.assert_close(out[n, 0, :rows, 0], expected.float(), atol=1e-5, rtol=0)


def test_odd_num_feats_is_an_error():
    with pytest.raises(ValueError, match='even'):
        MODELS.build(dict(type='SinePositionalEncoding', num_feats=5))
