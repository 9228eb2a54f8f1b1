"""``torchvision://NAME`` checkpoints, resolved from the local torch hub cache, never downloaded.

mmdetection configs name ImageNet backbones as ``init_cfg=dict(type='Pretrained',
checkpoint='torchvision://resnet50')``. mmengine's loader for that scheme
(``mmengine/runner/checkpoint.py``, ``load_from_torchvision``) looks the name up in its URL table
and downloads the file. rcnn_det runs on machines without internet, so a backbone resolves the
name itself before mmengine sees it: to the file torchvision's own downloader would have written,
``<torch.hub.get_dir()>/checkpoints/<file name of the URL>``, e.g. ``resnet50-0676ba61.pth``.
When that file is missing the error names the path and says how to put the file there.

Names are mmengine's (``get_torchvision_models``): ``resnet50`` is torchvision's V1 weight
(``resnet50-0676ba61.pth``, the one mmdetection's results were trained from);
``resnet50.imagenet1k_v2`` (or ``resnet50.default``) the V2 weight (``resnet50-11ad3fa6.pth``).
"""
from __future__ import annotations

import copy
import difflib
import os.path as osp
from urllib.parse import urlparse

import torch
from mmengine.runner.checkpoint import get_torchvision_models

TORCHVISION_PREFIXES = ('torchvision://', 'modelzoo://')   # modelzoo:// is mmengine's old alias


def torchvision_weight_file(name: str, where: str = 'init_cfg') -> tuple[str, str]:
    """mmengine's torchvision name -> (published URL, expected path in the torch hub cache)."""
    urls = get_torchvision_models()   # mmengine's json table + torchvision's weight enums; offline
    if name not in urls:
        close = difflib.get_close_matches(name, list(urls), n=3, cutoff=0.6)
        hint = f'; closest: {close}' if close else ''
        raise KeyError(f"{where}: unknown torchvision weight name '{name}'{hint}")
    url = urls[name]
    file_name = osp.basename(urlparse(url).path)
    return url, osp.join(torch.hub.get_dir(), 'checkpoints', file_name)


def _cached_alternatives(name: str, expected: str) -> list[str]:
    """Other weights of the same architecture already in the cache directory, as names."""
    arch = name.split('.')[0]
    folder = osp.dirname(expected)
    found = []
    for other, url in get_torchvision_models().items():
        if other.split('.')[0] == arch and other != name and osp.isfile(
                osp.join(folder, osp.basename(urlparse(url).path))):
            found.append(f'torchvision://{other}')
    return sorted(found)


def resolve_torchvision_checkpoint(checkpoint: str, where: str = 'init_cfg') -> str:
    """``torchvision://NAME`` (or ``modelzoo://NAME``) -> the local cached file; other paths
    pass through unchanged. Raises FileNotFoundError, naming the expected path, when the file
    is not there: nothing is downloaded."""
    prefix = next((p for p in TORCHVISION_PREFIXES if checkpoint.startswith(p)), None)
    if prefix is None:
        return checkpoint
    name = checkpoint[len(prefix):]
    url, expected = torchvision_weight_file(name, where)
    if osp.isfile(expected):
        return expected
    others = _cached_alternatives(name, expected)
    also = (f'\nThat directory holds other weights of this architecture: {", ".join(others)}.'
            if others else '')
    raise FileNotFoundError(
        f"{where}: checkpoint '{checkpoint}' is torchvision's weight file "
        f"'{osp.basename(expected)}', expected at\n    {expected}\n"
        f'which does not exist, and rcnn_det never downloads. On a machine with internet '
        f'access, download {url}\n'
        f'(e.g. python -c "import torch; torch.hub.load_state_dict_from_url(\'{url}\')" saves '
        f'it into that machine\'s torch hub cache, <torch.hub.get_dir()>/checkpoints/), then copy '
        f'the file to the path above, or set TORCH_HOME to a directory whose hub/checkpoints/ '
        f'holds it.{also}')


def resolve_pretrained_init_cfg(init_cfg, where: str = 'init_cfg'):
    """A copy of ``init_cfg`` (a dict or a list of them) whose ``Pretrained`` checkpoints named
    ``torchvision://...`` point at the local cached files."""
    if init_cfg is None:
        return None
    cfgs = [init_cfg] if isinstance(init_cfg, dict) else list(init_cfg)
    resolved = []
    for cfg in cfgs:
        cfg = copy.deepcopy(cfg)
        checkpoint = cfg.get('checkpoint')
        if cfg.get('type') == 'Pretrained' and isinstance(checkpoint, str):
            cfg['checkpoint'] = resolve_torchvision_checkpoint(checkpoint, where)
        resolved.append(cfg)
    return resolved[0] if isinstance(init_cfg, dict) else resolved


def backbone_init_cfg(name: str, pretrained: str | None, init_cfg):
    """A backbone's ``init_cfg`` from mmdetection's two ways of asking for weights (the old
    ``pretrained=PATH`` or ``init_cfg``); without either, Kaiming convs and unit norms."""
    if pretrained is not None:
        if init_cfg is not None:
            raise ValueError(f'{name}: give init_cfg or pretrained, not both')
        return dict(type='Pretrained', checkpoint=pretrained)
    if init_cfg is None:
        return [dict(type='Kaiming', layer='Conv2d'),
                dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])]
    return init_cfg
