"""Every DETR-family model trains under mixed precision: one step of each demo model inside
``torch.autocast`` (what ``AmpOptimWrapper`` wraps the forward in) with fp16 and bf16 gives
finite losses and finite gradients everywhere. Run on the CPU here; on a GPU the same code
runs under CUDA autocast."""
from __future__ import annotations

import pytest
import torch
from mmengine.config import Config

from tests.conftest import REPO_ROOT, build_initialised
from tests.test_models.test_detectors.test_dino import make_batch, total_loss

DEMOS = ['deformable_detr_r18_shapes', 'co_deformable_detr_r18_shapes', 'dino_r18_shapes',
         'co_dino_r18_shapes']


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('demo', DEMOS)
def test_one_mixed_precision_training_step(demo, dtype):
    cfg = Config.fromfile(REPO_ROOT / 'configs' / 'demo' / f'{demo}.py')
    model = build_initialised(cfg.model).train()
    data = make_batch(model, [(96, 96), (80, 96)], [2, 1], num_classes=4)
    with torch.autocast('cpu', dtype=dtype):
        losses = model(**data, mode='loss')
    for name, value in losses.items():
        values = value if isinstance(value, list) else [value]
        assert all(torch.isfinite(v).all() for v in values), name
    model.zero_grad()
    total_loss(losses).float().backward()
    bad = [n for n, p in model.named_parameters()
           if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert bad == []
