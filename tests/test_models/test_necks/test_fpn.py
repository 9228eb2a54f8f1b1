"""FPN: output shapes with and without extra convs, mmdet's key names, the top-down sum."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rcnn_det.models.necks import FPN
from rcnn_det.registry import MODELS

IN_CHANNELS = [4, 8, 16, 32]


def inputs(batch: int = 1, size: int = 32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(batch, c, size // 2 ** i, size // 2 ** i, generator=g)
                 for i, c in enumerate(IN_CHANNELS))


@pytest.mark.parametrize('add_extra_convs', [False, True, 'on_input', 'on_lateral', 'on_output'])
def test_output_shapes_num_outs_5(add_extra_convs):
    fpn = FPN(IN_CHANNELS, out_channels=6, num_outs=5, add_extra_convs=add_extra_convs)
    outs = fpn(inputs())
    assert [tuple(o.shape) for o in outs] == [(1, 6, 32, 32), (1, 6, 16, 16), (1, 6, 8, 8),
                                             (1, 6, 4, 4), (1, 6, 2, 2)]
    assert len(fpn.fpn_convs) == (4 if add_extra_convs is False else 5)


def test_odd_sizes_and_three_extra_levels():
    fpn = FPN(IN_CHANNELS, out_channels=6, num_outs=7, add_extra_convs='on_output',
              relu_before_extra_convs=True)
    x = tuple(torch.randn(1, c, s, s) for c, s in zip(IN_CHANNELS, [25, 13, 7, 4]))
    outs = fpn(x)
    assert [o.shape[-1] for o in outs] == [25, 13, 7, 4, 2, 1, 1]


def test_state_dict_key_names():
    fpn = MODELS.build(dict(type='FPN', in_channels=IN_CHANNELS, out_channels=6, num_outs=5))
    keys = set(fpn.state_dict())
    assert 'lateral_convs.0.conv.weight' in keys and 'fpn_convs.0.conv.weight' in keys
    assert keys == {f'{kind}.{i}.conv.{p}' for kind in ('lateral_convs', 'fpn_convs')
                    for i in range(4) for p in ('weight', 'bias')}
    extra = FPN(IN_CHANNELS, out_channels=6, num_outs=5, add_extra_convs='on_input')
    assert extra.fpn_convs[4].conv.in_channels == 32            # from the last backbone map
    assert 'fpn_convs.4.conv.weight' in extra.state_dict()


def test_top_down_pathway_and_max_pool_p6():
    fpn = FPN(IN_CHANNELS, out_channels=6, num_outs=5)
    x = inputs()
    outs = fpn(x)
    lat = [conv(xi) for conv, xi in zip(fpn.lateral_convs, x)]
    for i in (2, 1, 0):
        lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode='nearest')
    for i in range(4):
        torch.testing.assert_close(outs[i], fpn.fpn_convs[i](lat[i]))
    torch.testing.assert_close(outs[4], outs[3][..., ::2, ::2])   # P6 = stride-2 subsample of P5


def test_start_level_and_errors():
    fpn = FPN(IN_CHANNELS, out_channels=6, start_level=1, num_outs=4)
    outs = fpn(inputs())
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]
    with pytest.raises(ValueError, match='add_extra_convs'):
        FPN(IN_CHANNELS, 6, 5, add_extra_convs='on_top')
    with pytest.raises(ValueError, match='expects 4 input maps'):
        FPN(IN_CHANNELS, 6, 5)(inputs()[:3])
