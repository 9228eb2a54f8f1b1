"""DINO and Co-DINO have mmdetection's state-dict names and shapes, entry for entry, and log
its loss keys, so that its checkpoints load with strict=True.

The reference lists in tests/data/mmdet_reference/ were produced by mmdetection's own code
(mmdetection 3.3.0 and its projects/CO-DETR) building the same configs; their README says how.
The models are built on the meta device: names and shapes without memory.
"""
from __future__ import annotations

import math

import pytest
import torch
from mmengine.config import Config

from rcnn_det.registry import MODELS
from tests.conftest import REPO_ROOT
from tests.test_models.test_detectors.test_co_dino import co_dino_loss_keys
from tests.test_models.test_detectors.test_dino import dino_loss_keys

REFERENCE = REPO_ROOT / 'tests' / 'data' / 'mmdet_reference'

# (config, reference list, state-dict entries, state-dict elements)
MODELS_AND_COUNTS = [
    ('configs/dino/dino-4scale_r50_8xb2-12e_coco.py', 'dino_4scale_r50', 627, 47_755_585),
    ('configs/dino/dino-5scale_swin-l_8xb2-12e_coco.py', 'dino_5scale_swin_l', 669,
     218_830_208),
    ('configs/co_detr/co_dino_5scale_r50_lsj_8xb2_1x_coco.py', 'co_dino_5scale_r50', 674,
     65_257_178),
    ('configs/co_detr/co_dino_5scale_swin_l_16xb1_1x_coco.py', 'co_dino_5scale_swin_l', 713,
     235_969_433),
]


def read_reference(name: str) -> dict[str, tuple[int, ...]]:
    entries = {}
    for line in (REFERENCE / f'{name}.keys.txt').read_text().splitlines():
        if not line.strip() or line.startswith('#'):
            continue
        key, _, shape = line.partition('\t')
        entries[key] = tuple(int(x) for x in shape.split(',') if x)
    return entries


def meta_state_dict(config: str) -> dict[str, tuple[int, ...]]:
    cfg = Config.fromfile(REPO_ROOT / config)
    cfg.model.backbone.init_cfg = None
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize('config, name, entries, elements', MODELS_AND_COUNTS,
                         ids=[m[1] for m in MODELS_AND_COUNTS])
def test_state_dict_equals_mmdetections(config, name, entries, elements):
    reference = read_reference(name)
    assert len(reference) == entries
    assert sum(math.prod(s) for s in reference.values()) == elements
    ours = meta_state_dict(config)
    assert sorted(set(reference) - set(ours)) == []    # missing here
    assert sorted(set(ours) - set(reference)) == []    # extra here
    assert {k: s for k, s in ours.items() if reference[k] != s} == {}


@pytest.mark.parametrize('name, expected', [
    ('dino_4scale_r50', dino_loss_keys()),
    ('dino_5scale_swin_l', dino_loss_keys()),
    ('co_dino_5scale_r50', co_dino_loss_keys()),
    ('co_dino_5scale_swin_l', co_dino_loss_keys()),
])
def test_loss_keys_equal_mmdetections(name, expected):
    logged = set((REFERENCE / f'{name}.loss_keys.txt').read_text().split())
    assert logged == expected
