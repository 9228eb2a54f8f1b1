"""Training never loses work, through the real tools on tiny generated data (CPU):

- a process killed inside a save leaves the previous checkpoint and ``last_checkpoint`` usable;
- killed at random iterations again and again, each time resumed, a run ends bit-identical to
  the uninterrupted one (weights, optimizer state, scheduler, metrics);
- SIGTERM saves a checkpoint at the current iteration and exits non-zero;
- a NaN loss skips its step, named; too many in a row stop the run; no checkpoint holds a NaN;
- ``--resume`` refuses a checkpoint of another model, and says so when there is nothing to resume.

The test doubles (a slow checkpoint writer, a detector that returns NaN losses on cue) live in a
module written next to each test's config and imported by it (``custom_imports``)."""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import PYTHON, REPO_ROOT, write_tiny_demo_config
from rcnn_det.engine import register_checkpoint_safe_globals

pytestmark = pytest.mark.slow

TRAIN = str(REPO_ROOT / 'tools' / 'train.py')

DOUBLES = '''
"""Test doubles imported by the test configs."""
import os
import sys
import time

import torch
from mmengine.logging import MessageHub

import rcnn_det.engine.runner as runner_module
from rcnn_det.engine.atomic_io import atomic_write
from rcnn_det.models.detectors import FasterRCNN
from rcnn_det.registry import MODELS

_save = runner_module.atomic_torch_save


def slow_save(obj, path):
    """Writes the checkpoint named by SLOW_SAVE half, says so, and waits to be killed."""
    if not path.endswith(os.environ.get('SLOW_SAVE', '-')):
        return _save(obj, path)

    def write(f):
        torch.save(obj, f)
        f.flush()
        f.truncate(f.tell() // 2)
        print('SLOW-SAVE-STARTED', flush=True)
        time.sleep(60)
    atomic_write(path, write)


runner_module.atomic_torch_save = slow_save


@MODELS.register_module()
class NaNLossFasterRCNN(FasterRCNN):
    """Faster R-CNN whose loss_cls is NaN at the iterations (1-based) listed in ``nan_iters``."""

    def __init__(self, nan_iters=(), **kwargs):
        super().__init__(**kwargs)
        self.nan_iters = set(nan_iters)

    def loss(self, inputs, data_samples):
        losses = super().loss(inputs, data_samples)
        if MessageHub.get_current_instance().get_info('iter') + 1 in self.nan_iters:
            losses['loss_cls'] = losses['loss_cls'] * float('nan')
        return losses
'''


def make_config(tmp_path: Path, shapes_root: Path, max_iters: int, interval: int,
                extra: str = '') -> Path:
    (tmp_path / 'safety_doubles.py').write_text(DOUBLES)
    cfg = write_tiny_demo_config(
        tmp_path / 'safety.py', shapes_root, max_iters=max_iters, checkpoint_interval=interval,
        extra="custom_imports = dict(imports=['safety_doubles'], allow_failed_imports=False)\n"
              + extra)
    # keep one checkpoint (the demos' setting); no predictions drawn
    text = cfg.read_text().replace('max_keep_ckpts=-1', 'max_keep_ckpts=1').replace(
        'default_hooks = dict(', 'default_hooks = dict(visualization=dict(draw=False), ')
    cfg.write_text(text)
    return cfg


def env(tmp_path: Path, **extra) -> dict:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get('PATH', '')])
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(tmp_path)]),
                OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', PATH=path, **extra)


def train(tmp_path: Path, cfg: Path, work: Path, *args: str,
          **env_extra) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, TRAIN, str(cfg), '--work-dir', str(work), *args],
                          cwd=tmp_path, env=env(tmp_path, **env_extra), capture_output=True,
                          text=True, timeout=300)


def train_until(tmp_path: Path, cfg: Path, work: Path, pattern: str, sig: int, *args: str,
                **env_extra) -> tuple[int, str]:
    """Start training, send ``sig`` once its output matches ``pattern``; (exit code, output)."""
    log = tmp_path / f'{work.name}.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen([PYTHON, TRAIN, str(cfg), '--work-dir', str(work), *args],
                                cwd=tmp_path, env=env(tmp_path, **env_extra), stdout=out,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 240
            while proc.poll() is None and time.monotonic() < deadline:
                if re.search(pattern, log.read_text()):
                    proc.send_signal(sig)
                    break
                time.sleep(0.02)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, log.read_text()


def load(path: Path) -> dict:
    register_checkpoint_safe_globals()
    return torch.load(path, map_location='cpu', weights_only=True)


def assert_same_training(a: dict, b: dict) -> None:
    """Bit-identical weights, optimizer state and scheduler state."""
    assert a['state_dict'].keys() == b['state_dict'].keys()
    differ = [k for k in a['state_dict'] if not torch.equal(a['state_dict'][k], b['state_dict'][k])]
    assert not differ, f'{len(differ)} tensors differ, e.g. {differ[:3]}'
    state_a, state_b = a['optimizer']['state'], b['optimizer']['state']
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        for name in state_a[index]:
            assert torch.equal(state_a[index][name], state_b[index][name]), (index, name)
    assert a['param_schedulers'] == b['param_schedulers']
    assert a['meta']['iter'] == b['meta']['iter']


def final_metrics(log: str) -> str:
    return re.findall(r'Iter\(val\) \[\d+/\d+\]\s+(coco/bbox_mAP: .*?)data_time', log)[-1]


MAX_ITERS = 10


def resume_to_the_end_like(uninterrupted, tmp_path: Path, cfg: Path, work: Path) -> str:
    """``--resume`` to MAX_ITERS; the run must end as the uninterrupted one (weights, optimizer,
    schedulers, final metrics). Returns its log."""
    proc = train(tmp_path, cfg, work, '--resume')
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference, metrics, _ = uninterrupted
    assert_same_training(load(work / f'iter_{MAX_ITERS}.pth'), reference)
    assert final_metrics(proc.stdout) == metrics
    return proc.stdout


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, tiny_shapes_root):
    """The reference run: MAX_ITERS iterations, a checkpoint every 2, no interruption."""
    tmp_path = tmp_path_factory.mktemp('uninterrupted')
    cfg = make_config(tmp_path, tiny_shapes_root, MAX_ITERS, 2)
    proc = train(tmp_path, cfg, tmp_path / 'work')
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = tmp_path / 'work' / f'iter_{MAX_ITERS}.pth'
    return load(path), final_metrics(proc.stdout), path


def test_kill_during_save_keeps_previous_checkpoint(tmp_path, tiny_shapes_root, uninterrupted):
    cfg = make_config(tmp_path, tiny_shapes_root, MAX_ITERS, 2)
    work = tmp_path / 'work'
    code, log = train_until(tmp_path, cfg, work, 'SLOW-SAVE-STARTED', signal.SIGKILL,
                            SLOW_SAVE='iter_4.pth')
    assert code == -signal.SIGKILL, log[-2000:]
    # max_keep_ckpts=1: mmengine would have deleted iter_2.pth before writing iter_4.pth in place
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_2.pth']
    assert (work / 'last_checkpoint').read_text().endswith('iter_2.pth')
    assert load(work / 'iter_2.pth')['meta']['iter'] == 2
    leftovers = [p.name for p in work.iterdir() if p.name.startswith('.iter_4.pth.')]
    assert leftovers, 'the half-written temporary file should be what the kill left'

    # A last_checkpoint naming a missing file (say, removed by hand): the newest readable one
    (work / 'last_checkpoint').write_text(str(work / 'iter_4.pth'))
    log = resume_to_the_end_like(uninterrupted, tmp_path, cfg, work)
    assert f'names {work / "iter_4.pth"}, which is missing; resuming from ' \
           f'{work / "iter_2.pth"} instead' in log
    assert 'resumed epoch: 0, iter: 2' in log


def test_killed_five_times_ends_like_the_uninterrupted_run(tmp_path, tiny_shapes_root,
                                                           uninterrupted):
    cfg = make_config(tmp_path, tiny_shapes_root, MAX_ITERS, 2)
    work = tmp_path / 'work'
    draw = random.Random(12)
    done = 0
    for attempt in range(5):  # each run is killed at a random iteration after the last checkpoint
        kill_at = draw.randint(done + 1, MAX_ITERS - 1)
        code, log = train_until(tmp_path, cfg, work, rf'Iter\(train\) \[ ?{kill_at}/',
                                signal.SIGKILL, '--resume')
        assert code == -signal.SIGKILL, log[-2000:]
        if attempt == 0:  # nothing to resume yet: said, then trained from scratch
            assert f'WARNING - --resume: no checkpoint in {work} to resume from; training ' \
                   'starts from scratch' in log
        done = load(Path((work / 'last_checkpoint').read_text()))['meta']['iter']
    resume_to_the_end_like(uninterrupted, tmp_path, cfg, work)


def test_sigterm_saves_the_current_iteration_and_resumes_exactly(tmp_path, tiny_shapes_root,
                                                                uninterrupted):
    cfg = make_config(tmp_path, tiny_shapes_root, MAX_ITERS, 4)
    work = tmp_path / 'work'
    code, log = train_until(tmp_path, cfg, work, r'Iter\(train\) \[ ?5/', signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, log[-2000:]
    stopped_at = int(re.search(r'training stopped by SIGTERM after iteration (\d+)', log)[1])
    assert stopped_at >= 5
    assert (work / 'last_checkpoint').read_text().endswith(f'iter_{stopped_at}.pth')
    assert load(work / f'iter_{stopped_at}.pth')['meta']['iter'] == stopped_at

    proc = train(tmp_path, cfg, work, '--resume')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_training(load(work / f'iter_{MAX_ITERS}.pth'), uninterrupted[0])


def test_nan_losses_are_skipped_named_and_too_many_stop_the_run(tmp_path, tiny_shapes_root):
    cfg = make_config(tmp_path, tiny_shapes_root, 20, 2,
                      extra="model = dict(type='NaNLossFasterRCNN', nan_iters=[2, 5, 6, 7])")
    work = tmp_path / 'work'
    proc = train(tmp_path, cfg, work, '--cfg-options', 'train_cfg.max_consecutive_nonfinite=3')
    assert proc.returncode != 0
    # one NaN: skipped and named, training goes on
    assert 'iteration 2: optimizer step skipped (non-finite loss terms: loss_cls)' in proc.stdout
    assert re.search(r'Iter\(train\) \[ ?3/20\]', proc.stdout)
    # three in a row: stopped, naming the last good checkpoint (iteration 7 raised before its
    # checkpoint hook; iter_6.pth holds iteration 4's weights, the skipped steps changed nothing)
    assert ('NonFiniteTrainingError: 3 iterations in a row (5-7) had a non-finite loss or '
            'gradient (train_cfg.max_consecutive_nonfinite=3): training stopped') in proc.stderr
    assert f'last good checkpoint: {work / "iter_6.pth"}' in proc.stderr
    checkpoint = load(work / 'iter_6.pth')
    assert all(torch.isfinite(t).all() for t in checkpoint['state_dict'].values()
               if t.is_floating_point())


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path, tiny_shapes_root,
                                                      uninterrupted):
    cfg = make_config(tmp_path, tiny_shapes_root, MAX_ITERS + 2, 2)
    checkpoint = uninterrupted[2]
    proc = train(tmp_path, cfg, tmp_path / 'work', '--resume', str(checkpoint), '--cfg-options',
                 'model.roi_head.bbox_head.num_classes=3')
    assert proc.returncode != 0
    assert f'checkpoint {checkpoint} does not fit the model' in proc.stderr
    assert 'roi_head.bbox_head.fc_cls.weight: checkpoint (5, 256) vs model (4, 256)' \
        in proc.stderr
