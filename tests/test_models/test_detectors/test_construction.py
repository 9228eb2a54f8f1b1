"""Every detector is usable straight from its constructor: ``init_detector`` without a
checkpoint, and checkpoints written from such a model, never call ``init_weights``, so no
parameter or buffer may hold uninitialised memory (a Deformable DETR built on memory that held
NaNs once predicted NaN boxes)."""
from __future__ import annotations

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from conftest import (ATSS_DEMO_CONFIG, CO_DETR_DEMO_CONFIG, DEMO_CONFIG, DETR_DEMO_CONFIG,
                      MASK_DEMO_CONFIG, VGG_DEMO_CONFIG)
from rcnn_det.registry import MODELS

CONFIGS = [DEMO_CONFIG, MASK_DEMO_CONFIG, ATSS_DEMO_CONFIG, DETR_DEMO_CONFIG, VGG_DEMO_CONFIG,
           CO_DETR_DEMO_CONFIG]


def build(config) -> torch.nn.Module:
    cfg = Config.fromfile(config)
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        return MODELS.build(cfg.model)


@pytest.mark.parametrize('config', CONFIGS, ids=lambda p: p.stem)
def test_constructed_weights_are_initialised(config):
    torch.manual_seed(0)
    first = build(config).state_dict()
    # Freed NaN tensors of every size the model allocates: memory the allocator hands out
    # again, so an uninitialised tensor would read NaN.
    poison = [torch.full_like(v, float('nan')) for v in first.values() if v.is_floating_point()]
    del poison
    torch.manual_seed(0)
    second = build(config).state_dict()
    assert list(first) == list(second)
    for key, value in second.items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key
        assert torch.equal(value, first[key]), key
