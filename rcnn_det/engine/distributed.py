"""Distributed runs without GPUs, and distributed runs that end when they should.

mmengine's ``pytorch`` launcher calls ``torch.cuda.set_device`` unconditionally and wraps the
model in DDP with ``device_ids=[LOCAL_RANK]``; both fail on a machine without CUDA. When no GPU is
present, ``init_cpu_distributed`` starts the process group itself with the gloo backend (the
Runner then skips its own initialisation) and asks for a DDP wrapper without device ids.

A rank must not outlive its run: ``follow_launcher`` ends it when the torchrun launcher dies, and
``env_cfg.dist_cfg.timeout`` bounds how long the others wait in a collective for a hung rank.
"""
from __future__ import annotations

import datetime
import numbers
import os
import signal
import sys
import threading

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log

# tools/dist_train.sh and dist_test.sh export their own PID under this name, then `exec` torchrun,
# which keeps that PID: the ranks' parent is this process for as long as the launcher lives.
LAUNCHER_PID_ENV = 'RCNN_DET_LAUNCHER_PID'
LAUNCHER_POLL_S = 0.5   # a rank notices a dead launcher within this (plus its SIGTERM handling)

# device_ids=None: DDP over CPU parameters (mmengine would pass [LOCAL_RANK], a GPU index).
CPU_MODEL_WRAPPER = dict(type='MMDistributedDataParallel', device_ids=None,
                         broadcast_buffers=False, find_unused_parameters=False)


def follow_launcher(poll_s: float = LAUNCHER_POLL_S) -> LauncherWatch | None:
    """End this rank, with one SIGTERM to itself, when the torchrun launcher that started it dies.

    torchrun starts every rank in a session of its own, so killing the launcher (even its whole
    process group, as Ctrl-C in a terminal or a job scheduler does) leaves the ranks training on
    and writing into the work dir. A daemon thread watches the parent PID and, once the launcher
    is gone (the rank handed to another parent), sends SIGTERM to this process: a training rank
    then stops like on any SIGTERM (CheckpointHook saves at the end of the iteration), other
    ranks die of it. Call it first thing in a rank, and ``stop()`` the returned watch when the
    rank is done (a thread still running while the interpreter shuts down can abort it).

    The launcher is the PID in ``RCNN_DET_LAUNCHER_PID`` (set by tools/dist_*.sh), else the
    parent at the time of the call; with the variable, a launcher that died before the call makes
    the rank exit at once (``SystemExit``). Returns the watching thread; None, doing nothing,
    outside torchrun (no ``TORCHELASTIC_RUN_ID`` in the environment).
    """
    if 'TORCHELASTIC_RUN_ID' not in os.environ:
        return None
    parent = os.getppid()
    launcher = int(os.environ.get(LAUNCHER_PID_ENV, parent))
    if parent != launcher:
        raise SystemExit(f'the launcher of this rank (PID {launcher}) died before the rank '
                         'started; exiting')
    # Not prctl(PR_SET_PDEATHSIG, SIGTERM): as the launcher's threads exit one by one the kernel
    # hands the rank from thread to thread, signalling each time (two SIGTERMs seen from a killed
    # torchrun), and a second SIGTERM makes CheckpointHook stop at once, without saving.
    watcher = LauncherWatch(launcher, poll_s)
    watcher.start()
    return watcher


class LauncherWatch(threading.Thread):
    """The thread of ``follow_launcher``: polls the parent PID until it is no longer the
    launcher (then SIGTERMs this process) or until ``stop()``."""

    def __init__(self, launcher: int, poll_s: float) -> None:
        super().__init__(name='follow-launcher', daemon=True)
        self.launcher, self.poll_s = launcher, poll_s
        self._stopped = threading.Event()

    def run(self) -> None:
        while os.getppid() == self.launcher:
            if self._stopped.wait(self.poll_s):
                return
        os.kill(os.getpid(), signal.SIGTERM)

    def stop(self) -> None:
        """End the watch (within one poll) and wait for the thread."""
        self._stopped.set()
        self.join()


def process_group_timeout(cfg: Config) -> datetime.timedelta | None:
    """``env_cfg.dist_cfg.timeout`` (seconds) as the timedelta ``init_process_group`` takes.

    A collective that waits longer than this for another rank (one hung, not dead: a dead rank
    makes torchrun stop the others within seconds) raises, the rank exits with an error and
    torchrun stops the rest. None without the key: torch's defaults, 1800 s for gloo and 600 s
    for nccl. mmengine's GPU path (``Runner.setup_env`` -> ``init_dist``) reads the same key
    and converts it the same way; this function checks it for both paths.
    """
    timeout = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout')
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or timeout <= 0:
        raise ValueError('env_cfg.dist_cfg.timeout must be a positive number of seconds, '
                         f'got {timeout!r}')
    return datetime.timedelta(seconds=timeout)


def init_cpu_distributed(cfg: Config) -> bool:
    """Start gloo for a ``--launcher pytorch`` run on CPUs; True when it did.

    The process group times out after ``env_cfg.dist_cfg.timeout`` seconds (see
    ``process_group_timeout``); on GPUs mmengine starts the group with that same timeout.
    """
    if cfg.get('launcher', 'none') == 'none':
        return False
    timeout = process_group_timeout(cfg)   # a bad value fails here on the GPU path too
    if cfg.launcher != 'pytorch' or torch.cuda.is_available():
        return False
    if not dist.is_initialized():
        backend = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend', 'gloo')
        if backend != 'gloo':
            print_log(f"no GPU: using the 'gloo' backend instead of {backend!r}",
                      logger='current')
        # Rank and world size come from torchrun's environment; timeout=None: torch's default.
        dist.init_process_group(backend='gloo', timeout=timeout)
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(CPU_MODEL_WRAPPER)
    return True


def destroy_distributed() -> None:
    """End the process group, if one is running (GPU or CPU runs alike).

    A process that exits with a live group can abort on the way out ("terminate called without
    an active exception": the backend's threads are still running when the interpreter tears
    down), which a launcher reports as a failed run after the work is done and saved.

    Called in a ``finally`` while an error propagates, it skips the closing barrier: the other
    ranks are in some other collective (or hung) and would never meet it, and the whole job would
    wait out the process-group timeout instead of this rank exiting and torchrun stopping the
    rest within seconds. A ``SystemExit`` (every rank stopping on a signal at the same iteration)
    keeps the barrier, so that no rank leaves while rank 0 still saves.
    """
    if dist.is_available() and dist.is_initialized():
        error = sys.exc_info()[1]
        if error is None or isinstance(error, SystemExit):
            dist.barrier()   # every process done with its collectives: none closes under another
        dist.destroy_process_group()
