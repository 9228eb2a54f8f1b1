"""Bad configs and data through tools/train.py fail at once with a message naming the culprit."""
from __future__ import annotations

import subprocess

import pytest

from conftest import PYTHON, REPO_ROOT, write_tiny_demo_config

pytestmark = pytest.mark.slow


def train_fails(cfg_path, cwd) -> str:
    proc = subprocess.run([PYTHON, str(REPO_ROOT / 'tools/train.py'), str(cfg_path),
                           '--work-dir', str(cwd / 'work')], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:]
    return proc.stderr


def test_missing_config_file(tmp_path):
    assert 'config file not found: nope.py' in train_fails('nope.py', tmp_path)


def test_misspelled_top_level_key(tmp_path, tiny_shapes_root):
    cfg = write_tiny_demo_config(tmp_path / 'c.py', tiny_shapes_root,
                                 extra='optim_wraper = dict(type="OptimWrapper")')
    err = train_fails(cfg, tmp_path)
    assert "unknown top-level key 'optim_wraper'; did you mean 'optim_wrapper'?" in err


def test_unknown_type_lists_close_names(tmp_path, tiny_shapes_root):
    cfg = write_tiny_demo_config(tmp_path / 'c.py', tiny_shapes_root,
                                 extra="model = dict(neck=dict(type='FPNN'))")
    err = train_fails(cfg, tmp_path)
    assert "type 'FPNN' is not registered" in err and "Did you mean 'FPN'" in err


def test_misspelled_head_recipe_key(tmp_path, tiny_shapes_root):
    cfg = write_tiny_demo_config(tmp_path / 'c.py', tiny_shapes_root,
                                 extra="model = dict(test_cfg=dict(rcnn=dict(score_th=0.1)))")
    err = train_fails(cfg, tmp_path)
    assert "roi_head.test_cfg: unknown key 'score_th'; did you mean 'score_thr'?" in err
