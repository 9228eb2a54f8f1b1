"""``CheckpointHook``: mmengine's hook (same name and arguments) that never loses a checkpoint.

What it changes, in the order a save happens:
1. the weights are checked first: a state dict with a NaN or inf is never written (the run
   stops with an error naming the tensor and the last good checkpoint);
2. the checkpoint carries ``resume_state``: the train loop's data position and the random
   generators of every rank, so that ``--resume`` continues exactly (``rcnn_det.engine.loops``);
3. it is written under a temporary name, fsynced and renamed into place; then ``last_checkpoint``
   is replaced the same way; only then are checkpoints beyond ``max_keep_ckpts`` deleted
   (mmengine deletes first and writes in place: a kill during the save lost every checkpoint);
4. ``save_best``: the previous best checkpoint is deleted only after the new best one is
   written (mmengine deletes it first: a kill in between left no best checkpoint at all);
5. ``save_on_signal``: SIGTERM or SIGINT during training saves a checkpoint at the end of the
   current iteration (every rank stops at the same one) and exits with 128 + the signal number;
   a second signal exits at once.
"""
from __future__ import annotations

import os.path as osp
import signal
import threading

import torch
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.hooks import CheckpointHook as MMEngineCheckpointHook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from rcnn_det.engine.atomic_io import atomic_write_text
from rcnn_det.registry import HOOKS

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class NonFiniteWeightsError(RuntimeError):
    """The model holds a NaN or inf: it is not saved and training stops."""


def first_non_finite(state_dict: dict) -> str | None:
    """The name of the first floating-point tensor of ``state_dict`` holding a NaN or inf."""
    for name, tensor in state_dict.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and \
                not bool(torch.isfinite(tensor).all()):
            return name
    return None


class DeferredRemovals:
    """A file backend whose ``remove``/``rmtree`` only record the path; everything else is the
    wrapped backend's (which may be a shared singleton, so it is not patched)."""

    def __init__(self, backend) -> None:
        self._backend = backend
        self.paths: list[str] = []

    def remove(self, path: str) -> None:
        self.paths.append(path)

    rmtree = remove

    def __getattr__(self, name: str):
        return getattr(self._backend, name)


@HOOKS.register_module()
class CheckpointHook(MMEngineCheckpointHook):
    """mmengine's ``CheckpointHook`` with atomic saves, ``resume_state``, a finite-weights check
    and saving on SIGTERM/SIGINT (module docstring).

    Args (beyond mmengine's, which keep their meaning):
        save_on_signal: save and stop on SIGTERM/SIGINT (default True); False leaves the
            signals' default actions.
    """

    def __init__(self, *args, save_on_signal: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.save_on_signal = save_on_signal
        self._signal: int | None = None
        self._previous_handlers: dict = {}
        self._resume_state: dict | None = None

    # ----------------------------------------------------------------------------- saving
    def before_train(self, runner) -> None:
        super().before_train(runner)
        is_local = self.file_client_args is None and self.backend_args is None and \
            '://' not in str(self.out_dir)
        if is_local and not getattr(runner, 'writes_checkpoints_atomically', False):
            self.backend_args = dict(backend='rcnn_det_atomic_local')
        if self.save_on_signal:
            self._install_signal_handlers()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self._resume_state is not None:
            checkpoint['resume_state'] = self._resume_state

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict,
                                   filename: str | None = None) -> None:
        """Save as ``filename`` (default: ``filename_tmpl`` of ``step``, kept in the
        ``max_keep_ckpts`` rotation; a given name stays outside it)."""
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        bad = first_non_finite(model.state_dict())
        if bad is not None:
            last = runner.message_hub.get_info('last_ckpt')
            raise NonFiniteWeightsError(
                f'{bad} holds NaN or inf at iteration {runner.iter + 1}: not saved; training '
                f'stops. Last good checkpoint: {last or "none (nothing was saved yet)"}')
        loop = runner.train_loop
        self._resume_state = loop.resume_state() if hasattr(loop, 'resume_state') else None

        doomed = self._rotate(runner, step) if filename is None else []
        filename = filename or self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, filename, self.file_client_args, save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
            backend_args=self.backend_args, **self.args)
        self._resume_state = None
        if not is_main_process():
            return
        atomic_write_text(osp.join(runner.work_dir, 'last_checkpoint'), str(self.last_ckpt))
        for old in doomed:  # only now that the new checkpoint is safely in place
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)

    def _save_best_checkpoint(self, runner, metrics: dict) -> None:
        """mmengine's (the same rules, names and message-hub keys), with the deletion of the
        previous best checkpoint held back until the new one is written."""
        backend = self.file_backend
        self.file_backend = deferred = DeferredRemovals(backend)
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        for path in deferred.paths:
            if backend.isdir(path):
                backend.rmtree(path)
            elif backend.isfile(path):
                backend.remove(path)

    def _rotate(self, runner, step: int) -> list[int]:
        """Record ``step`` among the kept checkpoints; the steps whose files go after saving
        (the message hub, saved in the checkpoint, already lists only those kept)."""
        if self.max_keep_ckpts <= 0:
            return []
        steps = list(self.keep_ckpt_ids)
        if not steps or steps[-1] != step:
            steps.append(step)
        self.keep_ckpt_ids.clear()  # a deque of maxlen max_keep_ckpts (mmengine's before_train)
        self.keep_ckpt_ids.extend(steps[-self.max_keep_ckpts:])
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        return steps[:-self.max_keep_ckpts]

    # ----------------------------------------------------------------------------- signals
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def _on_signal(self, signum: int, frame) -> None:
        if self._signal is not None:  # a second signal: stop now
            self._restore_signal_handlers()
            raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)
        self._signal = signum
        print_log(f'{signal.Signals(signum).name} received: saving a checkpoint at the end of '
                  'this iteration, then stopping (send it again to stop at once)',
                  logger='current', level=30)

    def _stop_requested(self) -> bool:
        """True on every rank when any rank got a stop signal."""
        flag = float(self._signal is not None)
        if get_world_size() > 1:
            flag_tensor = torch.tensor([flag])
            all_reduce(flag_tensor, op='max')
            flag = float(flag_tensor.item())
        return flag > 0

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        super().after_train_iter(runner, batch_idx, data_batch, outputs)
        if not (self.save_on_signal and self._stop_requested()):
            return
        step = runner.iter + 1
        if self.by_epoch:  # mid-epoch: an iteration checkpoint outside the epoch rotation
            self._save_checkpoint_with_step(runner, step, dict(epoch=runner.epoch, iter=step),
                                            filename=f'iter_{step}.pth')
        elif osp.basename(str(self.last_ckpt)) != self.filename_tmpl.format(step):
            self._save_checkpoint_with_step(runner, step, dict(epoch=runner.epoch, iter=step))
        signum = self._signal if self._signal is not None else signal.SIGTERM
        self._restore_signal_handlers()
        runner.logger.warning(f'training stopped by {signal.Signals(signum).name} after '
                              f'iteration {step}; checkpoint {self.last_ckpt}; continue with '
                              '--resume')
        raise SystemExit(128 + signum)

    def after_train(self, runner) -> None:
        self._restore_signal_handlers()
        super().after_train(runner)
