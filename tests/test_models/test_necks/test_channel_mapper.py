"""ChannelMapper: mmdet's keys and shapes (Deformable DETR's neck), outputs against the convs
applied by hand, extra levels from the last input then from each other."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rcnn_det.registry import MODELS

DEFORMABLE_DETR_NECK = dict(type='ChannelMapper', in_channels=[512, 1024, 2048], kernel_size=1,
                            out_channels=256, act_cfg=None,
                            norm_cfg=dict(type='GN', num_groups=32), num_outs=4)


def test_state_dict_matches_mmdetection():
    state = MODELS.build(DEFORMABLE_DETR_NECK).state_dict()
    expected = {}
    for i, cin in enumerate([512, 1024, 2048]):
        expected[f'convs.{i}.conv.weight'] = (256, cin, 1, 1)      # no bias: GroupNorm follows
        expected[f'convs.{i}.gn.weight'] = (256,)
        expected[f'convs.{i}.gn.bias'] = (256,)
    expected.update({'extra_convs.0.conv.weight': (256, 2048, 3, 3),
                     'extra_convs.0.gn.weight': (256,), 'extra_convs.0.gn.bias': (256,)})
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_outputs_equal_the_convs_by_hand():
    torch.manual_seed(0)
    neck = MODELS.build(dict(type='ChannelMapper', in_channels=[4, 6], out_channels=8,
                             kernel_size=3, num_outs=4))
    neck.init_weights()
    inputs = (torch.randn(2, 4, 16, 12), torch.randn(2, 6, 8, 6))
    outs = neck(inputs)
    assert [tuple(o.shape) for o in outs] == [(2, 8, 16, 12), (2, 8, 8, 6), (2, 8, 4, 3),
                                              (2, 8, 2, 2)]

    def conv(module, x, stride=1):
        return F.relu(F.conv2d(x, module.conv.weight, module.conv.bias, stride=stride, padding=1))
    torch.testing.assert_close(outs[0], conv(neck.convs[0], inputs[0]))
    torch.testing.assert_close(outs[1], conv(neck.convs[1], inputs[1]))
    first_extra = conv(neck.extra_convs[0], inputs[1], stride=2)     # from the last INPUT
    torch.testing.assert_close(outs[2], first_extra)
    torch.testing.assert_close(outs[3], conv(neck.extra_convs[1], first_extra, stride=2))


def test_without_extra_levels_and_errors():
    neck = MODELS.build(dict(type='ChannelMapper', in_channels=[4, 6], out_channels=8))
    assert neck.extra_convs is None
    assert len(neck((torch.randn(1, 4, 8, 8), torch.randn(1, 6, 4, 4)))) == 2
    with pytest.raises(ValueError, match='num_outs'):
        MODELS.build(dict(type='ChannelMapper', in_channels=[4, 6], out_channels=8, num_outs=1))
    with pytest.raises(ValueError, match='2 input maps'):
        neck((torch.randn(1, 4, 8, 8),))
