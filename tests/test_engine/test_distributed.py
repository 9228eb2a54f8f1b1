"""init_cpu_distributed / destroy_distributed / follow_launcher in one process (world size 1,
gloo); the two-process runs through tools/dist_train.sh are tests/test_tools/test_train_test.py's
and test_dist_faults.py's (a killed launcher, a hung rank)."""
from __future__ import annotations

import datetime
import os
import signal

import pytest
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.dist import init_dist

from conftest import free_port
from rcnn_det.engine import destroy_distributed, follow_launcher, init_cpu_distributed
from rcnn_det.engine.distributed import (CPU_MODEL_WRAPPER, LAUNCHER_PID_ENV, LauncherWatch,
                                         process_group_timeout)


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


@pytest.fixture
def spy_init_process_group(monkeypatch):
    """The keyword arguments of every dist.init_process_group call (which still runs)."""
    calls = []
    real = dist.init_process_group

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(dist, 'init_process_group', spy)
    return calls


@pytest.mark.parametrize('seconds', [10, 2.5])
def test_cpu_process_group_times_out_after_the_configured_seconds(
        torchrun_env, spy_init_process_group, seconds):
    cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='gloo',
                                                                      timeout=seconds))))
    assert init_cpu_distributed(cfg)
    assert spy_init_process_group == [dict(backend='gloo',
                                           timeout=datetime.timedelta(seconds=seconds))]


def test_without_the_timeout_key_torch_keeps_its_default(torchrun_env, spy_init_process_group):
    assert init_cpu_distributed(Config(dict(launcher='pytorch')))
    assert spy_init_process_group == [dict(backend='gloo', timeout=None)]
    assert process_group_timeout(Config(dict(env_cfg=dict(dist_cfg=dict())))) is None


@pytest.mark.parametrize('timeout', ['10', 0, -5, True, [10]])
def test_a_bad_timeout_fails_before_any_process_group_starts(monkeypatch, timeout):
    cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(timeout=timeout))))
    with pytest.raises(ValueError, match='env_cfg.dist_cfg.timeout'):
        process_group_timeout(cfg)
    # On GPUs as well, where mmengine starts the group later (Runner.setup_env).
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    with pytest.raises(ValueError, match='env_cfg.dist_cfg.timeout'):
        init_cpu_distributed(cfg)
    assert not dist.is_initialized()


def test_gpu_path_gets_the_same_timeout_from_mmengine(torchrun_env, monkeypatch,
                                                      spy_init_process_group):
    """The GPU path is mmengine's: Runner.setup_env calls init_dist(launcher, **dist_cfg),
    which turns the seconds into a timedelta (run here on gloo, without a GPU)."""
    cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='gloo',
                                                                      timeout=10))))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert not init_cpu_distributed(cfg)   # a GPU: left to mmengine
    monkeypatch.setattr(torch.cuda, 'set_device', lambda device: None)
    # init_dist would set the start method of this whole test process to 'spawn'.
    monkeypatch.setattr(torch.multiprocessing, 'get_start_method',
                        lambda allow_none=False: 'fork')
    init_dist(cfg.launcher, **cfg.env_cfg.dist_cfg)
    assert spy_init_process_group == [dict(backend='gloo',
                                           timeout=datetime.timedelta(seconds=10))]


@pytest.fixture
def launched_by_torchrun(monkeypatch):
    """This process as a rank of tools/dist_train.sh, whose parent PID the test decides: the
    launcher's PID (the variable tools/dist_*.sh export) and torchrun's variables; SIGTERMs to
    this process are recorded instead of acted on."""
    # A made-up PID: the real parent may be init itself (a test run whose shell has exited),
    # which is what a dead launcher looks like.
    parent = dict(pid=424242)
    monkeypatch.setattr(os, 'getppid', lambda: parent['pid'])
    monkeypatch.setenv('TORCHELASTIC_RUN_ID', 'none')
    monkeypatch.setenv(LAUNCHER_PID_ENV, str(parent['pid']))
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    yield parent, received
    signal.signal(signal.SIGTERM, previous)


# The watch's loop runs here in the test's own thread (``run()``), where the outcome does not
# depend on when another thread gets scheduled; tests/test_tools/test_dist_faults.py kills a
# real launcher and sees every rank end.

def test_a_rank_gets_one_sigterm_when_its_launcher_dies(launched_by_torchrun):
    parent, received = launched_by_torchrun
    watcher = follow_launcher(poll_s=0.01)
    assert watcher.daemon and watcher.is_alive() and received == []   # the launcher lives
    watcher.stop()
    assert not watcher.is_alive() and received == []   # stopped: no signal, no thread left
    watch = LauncherWatch(parent['pid'], poll_s=0.01)
    parent['pid'] = 1                                # it died: the rank was handed to init
    watch.run()
    assert received == [signal.SIGTERM]


def test_a_watch_polls_until_the_launcher_dies(launched_by_torchrun, monkeypatch):
    parent, received = launched_by_torchrun
    polls = []

    def wait(timeout):   # the launcher dies at the third poll
        polls.append(timeout)
        if len(polls) == 3:
            parent['pid'] = 1
        return False

    watch = LauncherWatch(parent['pid'], poll_s=0.25)
    monkeypatch.setattr(watch._stopped, 'wait', wait)
    watch.run()
    assert polls == [0.25] * 3 and received == [signal.SIGTERM]


def test_a_rank_whose_launcher_already_died_exits_at_once(launched_by_torchrun, monkeypatch):
    # The launcher (the PID in the variable) is no longer the parent: it died before the call.
    monkeypatch.setenv(LAUNCHER_PID_ENV, str(os.getppid() + 100000))
    with pytest.raises(SystemExit, match='died before the rank started'):
        follow_launcher()


def test_without_the_launcher_variable_the_parent_is_followed(launched_by_torchrun,
                                                              monkeypatch):
    parent, received = launched_by_torchrun
    monkeypatch.delenv(LAUNCHER_PID_ENV)
    watcher = follow_launcher(poll_s=0.01)
    watcher.stop()
    assert watcher.launcher == parent['pid']
    parent['pid'] += 100000
    watcher.run()
    assert received == [signal.SIGTERM]


def test_outside_torchrun_follow_launcher_does_nothing(monkeypatch):
    monkeypatch.delenv('TORCHELASTIC_RUN_ID', raising=False)
    assert follow_launcher() is None


def test_a_failing_rank_skips_the_closing_barrier(torchrun_env, monkeypatch):
    """The other ranks are in another collective: waiting for them would last the whole
    process-group timeout. A SystemExit (all ranks stopping on a signal) keeps the barrier."""
    barriers = []
    monkeypatch.setattr(dist, 'barrier', lambda: barriers.append(1))
    for error, expected_barriers in [(RuntimeError('collective timed out'), 0),
                                     (SystemExit(143), 1)]:
        assert init_cpu_distributed(Config(dict(launcher='pytorch')))
        with pytest.raises(type(error)):
            try:
                raise error
            finally:
                destroy_distributed()
        assert not dist.is_initialized() and len(barriers) == expected_barriers
        barriers.clear()
