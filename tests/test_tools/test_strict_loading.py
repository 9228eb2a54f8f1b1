"""A checkpoint that does not fit the model is refused by every loader, naming the file and the
keys and shapes that differ: tools/test.py (whose Runner's load_from alone would only warn and
evaluate a half-loaded model), tools/infer.py and init_detector. A pickle that holds more than
tensors and the allow-listed types stays refused by each of them.

One checkpoint, trained by tools/train.py, serves every test; only tools/test.py's refusal runs
in a process of its own (its exit status and stderr), the rest call the tools' main() here."""
from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys

import pytest
import torch

from conftest import PYTHON, REPO_ROOT, run_tool, write_tiny_demo_config
from rcnn_det.apis import init_detector
from rcnn_det.engine import (CheckpointMismatchError, CheckpointRefusedError, load_checkpoint_file,
                             register_checkpoint_safe_globals)

pytestmark = pytest.mark.slow

# The demo detects 4 shapes: fc_cls has 4 + 1 (background) rows, fc_reg 4 x 4.
NUM_CLASSES_3 = 'model.roi_head.bbox_head.num_classes=3'
FC_CLS = 'roi_head.bbox_head.fc_cls.weight: checkpoint (5, 256) vs model (4, 256)'


def load_tool(name: str):
    path = REPO_ROOT / 'tools' / f'{name}.py'
    spec = importlib.util.spec_from_file_location(f'{name}_tool', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(monkeypatch, tool: str, *args) -> None:
    """tools/<tool>.py's main() with these command-line arguments, in this process."""
    monkeypatch.setattr(sys, 'argv', [f'tools/{tool}.py', *map(str, args)])
    monkeypatch.setenv('LOCAL_RANK', '0')
    load_tool(tool).main()


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tiny_shapes_root):
    """(config, checkpoint) of the tiny demo trained for 2 iterations by tools/train.py."""
    root = tmp_path_factory.mktemp('strict')
    cfg = write_tiny_demo_config(root / 'tiny.py', tiny_shapes_root)
    run_tool([PYTHON, str(REPO_ROOT / 'tools/train.py'), str(cfg), '--work-dir',
              str(root / 'work')], cwd=root)
    return cfg, root / 'work' / 'iter_2.pth'


@pytest.fixture(scope='module')
def evil(trained, tmp_path_factory):
    """The trained checkpoint with a function in it: unpickling it could run code."""
    register_checkpoint_safe_globals()
    path = tmp_path_factory.mktemp('evil') / 'evil.pth'
    torch.save(dict(load_checkpoint_file(trained[1]), hook=pickle.loads), path)
    return path


def test_test_tool_refuses_a_checkpoint_of_another_model(trained, tmp_path):
    cfg, ckpt = trained
    args = [PYTHON, str(REPO_ROOT / 'tools/test.py'), str(cfg), str(ckpt), '--work-dir',
            str(tmp_path), '--cfg-options', NUM_CLASSES_3]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS='1')
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert f'checkpoint {ckpt} does not fit the model (FasterRCNN)' in proc.stderr, \
        proc.stderr[-3000:]
    assert FC_CLS in proc.stderr
    assert 'bbox_mAP' not in proc.stdout + proc.stderr  # nothing was evaluated


def test_infer_tool_and_init_detector_refuse_it(trained, tmp_path, monkeypatch,
                                                tiny_shapes_root):
    cfg, ckpt = trained
    image = sorted((tiny_shapes_root / 'val').glob('*.png'))[0]
    with pytest.raises(SystemExit) as error:  # sys.exit(message): printed to stderr, status 1
        run_main(monkeypatch, 'infer', cfg, ckpt, image, '--out-dir', tmp_path / 'out',
                 '--cfg-options', NUM_CLASSES_3)
    assert str(error.value).startswith(f'infer.py: error: checkpoint {ckpt} does not fit the '
                                       'model (FasterRCNN)')
    assert FC_CLS in str(error.value)
    assert not (tmp_path / 'out').exists()

    with pytest.raises(CheckpointMismatchError) as error:
        init_detector(cfg, ckpt, cfg_options={'model.roi_head.bbox_head.num_classes': 3})
    assert str(ckpt) in str(error.value) and FC_CLS in str(error.value)
    assert ('roi_head.bbox_head.fc_cls.weight', (5, 256), (4, 256)) in \
        error.value.shape_mismatches
    init_detector(cfg, ckpt)  # the config it was trained with fits


def test_every_loader_refuses_a_pickle_that_could_run_code(trained, evil, tmp_path,
                                                           monkeypatch, tiny_shapes_root):
    cfg, _ = trained
    image = sorted((tiny_shapes_root / 'val').glob('*.png'))[0]
    refused = f'refused to load checkpoint {evil}: it holds pickle.loads'
    with pytest.raises(CheckpointRefusedError, match=refused):
        run_main(monkeypatch, 'test', cfg, evil, '--work-dir', tmp_path)
    with pytest.raises(SystemExit, match=f'infer.py: error: {refused}'):
        run_main(monkeypatch, 'infer', cfg, evil, image, '--out-dir', tmp_path / 'out')
    with pytest.raises(pickle.UnpicklingError, match=refused):
        init_detector(cfg, evil)
