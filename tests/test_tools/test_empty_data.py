"""tools/train.py on a dataset that ends up empty fails at once, naming the file and the reason."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import PYTHON, REPO_ROOT, write_tiny_demo_config

pytestmark = pytest.mark.slow


def test_every_training_image_filtered(tmp_path, tiny_shapes_root):
    # Item assignment keeps the rest of train_dataloader that write_tiny_demo_config sets.
    cfg = write_tiny_demo_config(
        tmp_path / 'c.py', tiny_shapes_root,
        extra="train_dataloader['dataset']['filter_cfg'] = "
              "dict(filter_empty_gt=True, min_size=100000)")
    # PYTHONPATH as run_tool sets it: this checkout's rcnn_det, not another installed copy.
    proc = subprocess.run([PYTHON, str(REPO_ROOT / 'tools/train.py'), str(cfg),
                           '--work-dir', str(tmp_path / 'work')], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:]
    ann_file = tiny_shapes_root / 'annotations' / 'instances_train.json'
    assert (f'{ann_file}: no images left for training: 8 images in the file, 8 removed by '
            'filter_cfg min_size=100000 (shorter side below it), 0 by filter_empty_gt '
            '(no annotation of the classes)') in proc.stderr, proc.stderr[-4000:]
    assert 'need at least one array to concatenate' not in proc.stderr
