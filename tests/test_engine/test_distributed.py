"""init_cpu_distributed / destroy_distributed in one process (world size 1, gloo); the
two-process run through tools/dist_train.sh is tests/test_tools/test_train_test.py's."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from mmengine.config import Config

from conftest import free_port
from rcnn_det.engine import destroy_distributed, init_cpu_distributed
from rcnn_det.engine.distributed import CPU_MODEL_WRAPPER


@pytest.fixture
def torchrun_env(monkeypatch):
    """The variables torchrun sets for a single process."""
    for key, value in dict(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    yield
    destroy_distributed()


def test_pytorch_launcher_without_gpu_starts_gloo_and_ends_it(torchrun_env):
    cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    assert init_cpu_distributed(cfg)
    assert dist.is_initialized() and dist.get_backend() == 'gloo'
    assert cfg.model_wrapper_cfg == CPU_MODEL_WRAPPER
    tensor = torch.ones(2)
    dist.all_reduce(tensor)
    assert tensor.tolist() == [1.0, 1.0]
    destroy_distributed()
    assert not dist.is_initialized()
    destroy_distributed()   # nothing left to end: a no-op


def test_other_launchers_are_left_to_mmengine():
    cfg = Config(dict(launcher='none'))
    assert not init_cpu_distributed(cfg)
    assert not dist.is_initialized() and 'model_wrapper_cfg' not in cfg
