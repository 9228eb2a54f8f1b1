"""Shared fixtures: the repository root, and a tiny copy of the embedded shapes dataset."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / 'configs' / 'demo' / 'faster_rcnn_r18_fpn_shapes.py'
MASK_DEMO_CONFIG = REPO_ROOT / 'configs' / 'demo' / 'mask_rcnn_r18_fpn_shapes.py'
ATSS_DEMO_CONFIG = REPO_ROOT / 'configs' / 'demo' / 'atss_r18_fpn_shapes.py'
DETR_DEMO_CONFIG = REPO_ROOT / 'configs' / 'demo' / 'deformable_detr_r18_shapes.py'
VGG_DEMO_CONFIG = REPO_ROOT / 'configs' / 'demo' / 'faster_rcnn_vgg16_shapes.py'
CO_DETR_DEMO_CONFIG = REPO_ROOT / 'configs' / 'demo' / 'co_deformable_detr_r18_shapes.py'
DINO_DEMO_CONFIG = REPO_ROOT / 'configs' / 'demo' / 'dino_r18_shapes.py'
CO_DINO_DEMO_CONFIG = REPO_ROOT / 'configs' / 'demo' / 'co_dino_r18_shapes.py'
TINY_SHAPES = dict(num_train=8, num_val=4, img_size=(96, 128), obj_size=(24, 48), max_objects=2)


@pytest.fixture(scope='session')
def tiny_shapes_root(tmp_path_factory) -> Path:
    """A shapes dataset of 8 train and 4 val images, generated once per test session."""
    from rcnn_det.datasets.shapes import generate_shapes_dataset
    root = tmp_path_factory.mktemp('shapes') / 'shapes'
    generate_shapes_dataset(root, **TINY_SHAPES)
    return root


def write_tiny_demo_config(path: Path, shapes_root: Path, max_iters: int = 2,
                           checkpoint_interval: int = 2, extra: str = '',
                           base: Path = DEMO_CONFIG) -> Path:
    """A config inheriting a demo config, shrunk to ``max_iters`` iterations on tiny data."""
    root = f'{shapes_root}/'
    path.write_text(f"""
_base_ = [{str(base)!r}]
data_root = {root!r}
_shapes = {TINY_SHAPES!r}
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, shapes_cfg=_shapes))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, shapes_cfg=_shapes))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_iters={max_iters}, val_interval={max_iters})
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval={checkpoint_interval}, max_keep_ckpts=-1))
{extra}
""")
    return path


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_tool(args: list[str], cwd: Path, timeout: int = 600,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command of the README's kind from ``cwd`` (``env``: extra environment variables);
    fail with its output when it fails."""
    # The shell scripts call `python`: make it this interpreter (a virtualenv may be inactive).
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get('PATH', '')])
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS='1', PATH=path,
               **(env or {}))
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f'{" ".join(args)} failed ({proc.returncode}):\n'
                             f'{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}')
    return proc


PYTHON = sys.executable


def build_initialised(cfg: dict, seed: int = 0):
    """``MODELS.build(cfg)`` under a fixed seed, then ``init_weights()`` with mmengine's
    per-parameter init log silenced."""
    import logging

    import torch
    from mmengine.logging import MMLogger

    from rcnn_det.registry import MODELS
    torch.manual_seed(seed)
    module = MODELS.build(cfg)
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    module.init_weights()
    return module
