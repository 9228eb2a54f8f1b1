"""VGG: the seed's stride-16 VGG16 map, torchvision's state-dict layout, loading a torchvision
checkpoint through init_cfg, stage outputs, frozen stages and norm layers. Full-width forward
passes stay at 64 x 64; the 800 x 800 shape check and the torchvision models whose key lists
are compared run on the meta device (shapes only, nothing allocated or initialised)."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch.nn.modules.batchnorm import _BatchNorm

from rcnn_det.models.backbones import VGG
from rcnn_det.registry import MODELS


def seed_vgg16(**kwargs) -> VGG:
    """The backbone of seed 003: vgg16().features[:30], conv5_3 + ReLU at stride 16."""
    return VGG(depth=16, with_last_pool=False, out_indices=(4, ), **kwargs)


@pytest.fixture(scope='module')
def tv_vgg16() -> torch.nn.Module:
    """torchvision's vgg16: keys and shapes only (meta), then random features for real."""
    with torch.device('meta'):
        model = torchvision.models.vgg16(weights=None)
    model.features.to_empty(device='cpu')
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.features:
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, (2 / (9 * m.in_channels)) ** 0.5, generator=g)
                m.bias.uniform_(-0.1, 0.1, generator=g)
    return model.eval()


def test_vgg16_gives_the_seeds_512x50x50_map_for_800x800():
    # The seed's printout: torch.Size([1, 512, 50, 50]) for a (1, 3, 800, 800) image.
    with torch.device('meta'):
        model = seed_vgg16()
    (out, ) = model(torch.zeros(1, 3, 800, 800, device='meta'))
    assert tuple(out.shape) == (1, 512, 50, 50)
    assert model.feat_dim == 512
    # the seed's "30 layers": 13 convs, 13 ReLUs, 4 max-pools
    layers = list(model.features)
    assert len(layers) == 30
    assert sum(isinstance(m, torch.nn.Conv2d) for m in layers) == 13
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in layers) == 4
    assert isinstance(layers[-1], torch.nn.ReLU)


def test_stage_outputs_strides_and_widths():
    model = VGG(depth=16).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [
        (1, 64, 32, 32), (1, 128, 16, 16), (1, 256, 8, 8), (1, 512, 4, 4), (1, 512, 2, 2)]
    # base_channels narrows every stage by the same factor and keeps the 13 convs
    thin = VGG(depth=16, base_channels=16, with_last_pool=False, out_indices=(2, 4)).eval()
    with torch.no_grad():
        outs = thin(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 8, 8), (1, 128, 4, 4)]
    assert sum(isinstance(m, torch.nn.Conv2d) for m in thin.features) == 13
    with torch.device('meta'):
        assert [sum(isinstance(m, torch.nn.Conv2d) for m in VGG(depth=d).features)
                for d in (11, 13, 19)] == [8, 10, 16]
    with pytest.raises(KeyError, match='depth'):
        VGG(depth=15)
    with pytest.raises(ValueError, match='out_indices'):
        VGG(depth=16, num_stages=3, out_indices=(3, ))


def test_state_dict_keys_equal_torchvision(tv_vgg16):
    theirs = {f'features.{k}': tuple(v.shape) for k, v in tv_vgg16.features.state_dict().items()}
    for with_last_pool in (True, False):  # the pool has no parameters
        with torch.device('meta'):
            ours = VGG(depth=16, with_last_pool=with_last_pool).state_dict()
        assert list(ours) == list(theirs)
        assert {k: tuple(v.shape) for k, v in ours.items()} == theirs
    # with BatchNorm the layout is torchvision's vgg16_bn
    with torch.device('meta'):
        bn_theirs = torchvision.models.vgg16_bn(weights=None).features.state_dict()
        bn_ours = VGG(depth=16, norm_cfg=dict(type='BN')).state_dict()
    assert list(bn_ours) == [f'features.{k}' for k in bn_theirs]


def test_pretrained_torchvision_checkpoint_gives_identical_outputs(tmp_path, monkeypatch,
                                                                   tv_vgg16):
    # A torchvision vgg16 state dict: random features, and the classifier's keys and shapes
    # (fc6 25088 -> 4096, fc7, fc8 -> 1000) as zero-stride views, so that the file stays small.
    tv_vgg16_features = tv_vgg16.features
    state = {f'features.{k}': v for k, v in tv_vgg16_features.state_dict().items()}
    for name, shape in [('0', (4096, 25088)), ('3', (4096, 4096)), ('6', (1000, 4096))]:
        state[f'classifier.{name}.weight'] = torch.zeros(1).expand(*shape)
        state[f'classifier.{name}.bias'] = torch.zeros(1).expand(shape[0])
    assert list(state) == list(tv_vgg16.state_dict())
    path = tmp_path / 'vgg16_tv.pth'
    torch.save(state, path)

    messages = []
    monkeypatch.setattr('rcnn_det.models.backbones.vgg.print_log',
                        lambda msg, **kwargs: messages.append(msg))
    model = MODELS.build(dict(type='VGG', depth=16, with_last_pool=False, out_indices=(4, ),
                              init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    model.init_weights()
    model.eval()
    assert len(messages) == 1 and 'skipped 6 classifier tensors' in messages[0]
    assert 'classifier.0.weight' in messages[0]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        (out, ) = model(x)
        expected = tv_vgg16_features[:30](x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

    # the same file through torch's strict load_state_dict: the classifier is the only extra
    plain = seed_vgg16()
    plain.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(plain.features[28].weight, tv_vgg16_features[28].weight)


def test_frozen_stages():
    model = seed_vgg16(frozen_stages=2, base_channels=8)
    model.train()
    frozen, trainable = model.features[:10], model.features[10:]   # conv1_x, conv2_x
    assert all(not p.requires_grad for p in frozen.parameters())
    assert all(not m.training for m in frozen)
    assert all(p.requires_grad for p in trainable.parameters())
    assert all(m.training for m in trainable)
    assert all(p.requires_grad for p in seed_vgg16(base_channels=8).parameters())


def test_norm_cfg_and_norm_eval():
    model = VGG(depth=11, base_channels=8, norm_cfg=dict(type='BN'), norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert len(bns) == 8 and all(not m.training for m in bns)
    trainable = VGG(depth=11, base_channels=8, norm_cfg=dict(type='BN'), norm_eval=False).train()
    assert all(m.training for m in trainable.modules() if isinstance(m, _BatchNorm))
    assert not any(isinstance(m, _BatchNorm) for m in VGG(depth=11).modules())
