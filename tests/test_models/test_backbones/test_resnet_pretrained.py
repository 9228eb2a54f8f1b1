"""ResNet-50 ImageNet weights: a torchvision state-dict file, and mmdetection's
``torchvision://resnet50`` read from the torch hub cache, with nothing ever downloaded.

The weights are torchvision's ResNet-50 layout with random values (no real weights are needed):
rcnn_det's stage outputs must equal torchvision's layer1..layer4 outputs in eval mode.
"""
from __future__ import annotations

import logging
import os
import socket
import urllib.request

import mmengine.runner.checkpoint as mmengine_checkpoint
import pytest
import torch
import torchvision
from mmengine.config import Config
from mmengine.logging import MMLogger

from conftest import REPO_ROOT
from rcnn_det.models.backbones.torchvision_weights import resolve_torchvision_checkpoint
from rcnn_det.registry import MODELS

V1_FILE = 'resnet50-0676ba61.pth'   # mmengine's 'resnet50' (torchvision's IMAGENET1K_V1)
V2_FILE = 'resnet50-11ad3fa6.pth'   # 'resnet50.imagenet1k_v2' (torchvision's IMAGENET1K_V2)


class NetworkBlocked(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Every way a checkpoint could be fetched raises NetworkBlocked instead."""
    def refuse(*args, **kwargs):
        raise NetworkBlocked(f'network access attempted: {args[:2]!r}')
    monkeypatch.setattr(mmengine_checkpoint, 'load_from_http', refuse)
    monkeypatch.setattr(mmengine_checkpoint, 'load_url', refuse)
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', refuse)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', refuse)
    monkeypatch.setattr(urllib.request, 'urlopen', refuse)
    monkeypatch.setattr(socket.socket, 'connect', refuse)


@pytest.fixture
def hub_checkpoints(monkeypatch, tmp_path):
    """TORCH_HOME in tmp_path: torch.hub.get_dir() is <tmp>/torch_home/hub (empty)."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)   # a set_dir() elsewhere would win
    folder = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    assert torch.hub.get_dir() == str(tmp_path / 'torch_home' / 'hub')
    return folder


@pytest.fixture(scope='module')
def tv_resnet50():
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):   # non-trivial statistics: a wrong key shows
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    MMLogger.get_current_instance().setLevel(logging.WARNING)   # mmengine logs 'unexpected fc.*'
    return tv.eval()


@pytest.fixture(scope='module')
def tv_resnet50_file(tmp_path_factory, tv_resnet50):
    path = tmp_path_factory.mktemp('tv_weights') / V1_FILE
    torch.save(tv_resnet50.state_dict(), path)   # fc.weight / fc.bias included, as published
    return path


def torchvision_stage_outputs(tv: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    outs = []
    for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
        y = layer(y)
        outs.append(y)
    return outs


def assert_same_as_torchvision(model: torch.nn.Module, tv: torch.nn.Module,
                               forward: bool = False) -> None:
    theirs = {k: v for k, v in tv.state_dict().items() if not k.startswith('fc.')}
    ours = model.state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    if not forward:
        return
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs = model.eval()(x)
        expected = torchvision_stage_outputs(tv, x)
    assert [o.shape[1] for o in outs] == [256, 512, 1024, 2048]
    for out, exp in zip(outs, expected):
        # equal up to float rounding: rcnn_det folds each eval-mode BN into its conv
        torch.testing.assert_close(out, exp, rtol=1e-4, atol=1e-4)


def build_resnet50(checkpoint: str) -> torch.nn.Module:
    return MODELS.build(dict(type='ResNet', depth=50,
                             init_cfg=dict(type='Pretrained', checkpoint=checkpoint)))


def test_torchvision_state_dict_file_gives_torchvision_outputs(tv_resnet50, tv_resnet50_file,
                                                               no_network):
    model = build_resnet50(str(tv_resnet50_file))
    model.init_weights()
    assert_same_as_torchvision(model, tv_resnet50, forward=True)


def test_v2_and_legacy_names_resolve_to_their_files(hub_checkpoints, no_network):
    hub_checkpoints.mkdir(parents=True)
    for name in (V1_FILE, V2_FILE):
        (hub_checkpoints / name).touch()
    assert resolve_torchvision_checkpoint('torchvision://resnet50') == str(
        hub_checkpoints / V1_FILE)
    assert resolve_torchvision_checkpoint('modelzoo://resnet50') == str(hub_checkpoints / V1_FILE)
    for name in ('resnet50.imagenet1k_v2', 'resnet50.default'):
        assert resolve_torchvision_checkpoint(f'torchvision://{name}') == str(
            hub_checkpoints / V2_FILE)
    # anything else is a path for mmengine, untouched
    assert resolve_torchvision_checkpoint('checkpoints/x.pth') == 'checkpoints/x.pth'


def test_missing_cached_file_is_an_error_naming_the_path(hub_checkpoints, no_network):
    model = build_resnet50('torchvision://resnet50')
    with pytest.raises(FileNotFoundError) as error:
        model.init_weights()
    message = str(error.value)
    assert str(hub_checkpoints / V1_FILE) in message
    assert 'ResNet.init_cfg' in message and 'never downloads' in message
    assert f'https://download.pytorch.org/models/{V1_FILE}' in message and 'TORCH_HOME' in message
    # with only the V2 weight cached, the message points at its name
    hub_checkpoints.mkdir(parents=True)
    (hub_checkpoints / V2_FILE).touch()
    with pytest.raises(FileNotFoundError, match=r'torchvision://resnet50\.imagenet1k_v2'):
        build_resnet50('torchvision://resnet50').init_weights()


def test_unknown_torchvision_name_lists_the_closest(hub_checkpoints, no_network):
    with pytest.raises(KeyError, match="unknown torchvision weight name 'resnet5'.*resnet50"):
        build_resnet50('torchvision://resnet5').init_weights()


def test_torchvision_name_in_a_detector_config_is_read_from_the_hub_cache(
        tv_resnet50, tv_resnet50_file, hub_checkpoints, no_network):
    """mmdetection's way: the detector's init_weights() reaches the backbone's init_cfg."""
    hub_checkpoints.mkdir(parents=True)
    os.symlink(tv_resnet50_file, hub_checkpoints / V1_FILE)
    cfg = Config.fromfile(REPO_ROOT / 'configs/faster_rcnn/faster_rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint='torchvision://resnet50')
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert_same_as_torchvision(model.backbone, tv_resnet50)
    # the backbone's init_cfg now names the local file it was read from
    assert model.backbone.init_cfg['checkpoint'] == str(hub_checkpoints / V1_FILE)


def test_the_network_guard_catches_mmengines_own_loader(hub_checkpoints, no_network):
    """Control: without rcnn_det's resolution mmengine would download, and the guard says so."""
    with pytest.raises(NetworkBlocked):
        mmengine_checkpoint.CheckpointLoader.load_checkpoint('torchvision://resnet50')
