"""Model EMA as mmdetection's configs use it: mmengine's EMAHook with rcnn_det's
ExpMomentumEMA, through tools/train.py (averaged weights in the checkpoint, evaluation and
tools/test.py with them, resume)."""
from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from conftest import PYTHON, REPO_ROOT, run_tool, write_tiny_demo_config
from rcnn_det.engine import register_checkpoint_safe_globals
from rcnn_det.models.layers import ExpMomentumEMA
from rcnn_det.registry import MODELS

EMA_HOOK = ("custom_hooks = [dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.01, "
            "gamma=4, update_buffers=True, priority=49)]")


def ema_momentum(steps: int, momentum: float = 0.01, gamma: float = 4) -> float:
    """mmdetection's ExpMomentumEMA momentum at update ``steps``."""
    return (1 - momentum) * math.exp(-(1 + steps) / gamma) + momentum


def test_the_average_follows_the_formula():
    model = nn.Linear(2, 1, bias=False)
    ema = MODELS.build(dict(type='ExpMomentumEMA', model=model, momentum=0.01, gamma=4))
    assert isinstance(ema, ExpMomentumEMA)
    expected = None
    for steps, value in enumerate([2.0, 3.0, 5.0, -1.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update_parameters(model)
        # the first update copies the model; then each moves by the decaying momentum
        expected = value if steps == 0 else expected + (value - expected) * ema_momentum(steps)
        assert float(ema.module.weight[0, 0]) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match='gamma must be > 0'):
        ExpMomentumEMA(model, gamma=0)


def test_training_saves_evaluates_and_resumes_with_the_average(tmp_path, tiny_shapes_root):
    cfg = write_tiny_demo_config(tmp_path / 'tiny_ema.py', tiny_shapes_root, max_iters=2,
                                 checkpoint_interval=1, extra=EMA_HOOK)
    work = tmp_path / 'work'
    log = run_tool([PYTHON, str(REPO_ROOT / 'tools/train.py'), str(cfg), '--work-dir', str(work)],
                   cwd=tmp_path).stdout
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log)
    register_checkpoint_safe_globals()
    first, second = (torch.load(work / f'iter_{i}.pth', map_location='cpu', weights_only=True)
                     for i in (1, 2))
    # state_dict holds the averaged weights (what test.py and deployment load); ema_state_dict
    # the trained ones, under 'module.', and the update count
    assert int(second['ema_state_dict']['steps']) == 2
    names = [k for k, v in second['state_dict'].items()
             if v.is_floating_point() and k.endswith('weight')]
    assert len(names) > 20
    momentum = ema_momentum(1)
    for name in names:
        trained_1 = first['ema_state_dict'][f'module.{name}']
        averaged_1 = first['state_dict'][name]
        torch.testing.assert_close(averaged_1, trained_1)      # the first update copies
        trained_2 = second['ema_state_dict'][f'module.{name}']
        torch.testing.assert_close(second['state_dict'][name],
                                   averaged_1 + (trained_2 - averaged_1) * momentum)
    assert any(not torch.equal(second['state_dict'][n], second['ema_state_dict'][f'module.{n}'])
               for n in names)
    run_tool([PYTHON, str(REPO_ROOT / 'tools/test.py'), str(cfg), str(work / 'iter_2.pth'),
              '--work-dir', str(work)], cwd=tmp_path)
    log = run_tool([PYTHON, str(REPO_ROOT / 'tools/train.py'), str(cfg), '--work-dir', str(work),
                    '--resume', '--cfg-options', 'train_cfg.max_iters=3',
                    'train_cfg.val_interval=3'], cwd=tmp_path).stdout
    assert 'Iter(train) [3/3]' in log
    third = torch.load(work / 'iter_3.pth', map_location='cpu', weights_only=True)
    assert int(third['ema_state_dict']['steps']) == 3    # the average carried on from 2
