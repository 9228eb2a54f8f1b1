"""``IterBasedTrainLoop`` and ``EpochBasedTrainLoop``: mmengine's loops (same names and
arguments) that resume exactly and survive non-finite steps.

Exact resume. ``resume_state()`` (stored in every checkpoint by rcnn_det's ``CheckpointHook``)
holds the data position (sampler seed and epoch, batches trained in the epoch) and the random
generators of every rank. ``load_resume_state()`` (called by rcnn_det's Runner on ``--resume``)
makes ``run()`` start the data where it stopped, by index arithmetic only
(``fast_forward_data``: no image is read again), and restore the generators right before the
first resumed iteration. Validation and the creation of data iterators run under
``preserved_rng``, so neither moves the training's random streams, and augmentations are seeded
per sample (``rcnn_det.datasets.samplers``). On a CPU with a fixed seed a run killed and resumed
any number of times ends bit-identical to the uninterrupted run.

Non-finite steps. rcnn_det's ``OptimWrapper`` skips a step whose loss or gradient norm is not
finite; the loop then puts back the buffers the forward pass changed (BatchNorm statistics),
logs a WARNING naming the iteration and the loss terms that were not finite, and after
``max_consecutive_nonfinite`` skipped iterations in a row stops with an error that names the last
good checkpoint.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.logging import print_log
from mmengine.runner import BaseLoop
from mmengine.runner import EpochBasedTrainLoop as MMEngineEpochBasedTrainLoop
from mmengine.runner import IterBasedTrainLoop as MMEngineIterBasedTrainLoop
from mmengine.runner.utils import calc_dynamic_intervals
from torch.utils.data import BatchSampler, DataLoader

from rcnn_det.engine.random_state import capture_rng_state, preserved_rng, restore_rng_state
from rcnn_det.registry import LOOPS


class NonFiniteTrainingError(RuntimeError):
    """Too many iterations in a row had a non-finite loss or gradient."""


def fast_forward_data(dataloader: DataLoader, num_batches: int) -> bool:
    """Make the next pass over ``dataloader`` start after its first ``num_batches`` batches of the
    epoch, without loading them; False when its samplers cannot (then nothing changed)."""
    batch_sampler, sampler = dataloader.batch_sampler, dataloader.sampler
    if hasattr(batch_sampler, 'fast_forward'):
        batch_sampler.fast_forward(num_batches)
        return True
    if type(batch_sampler) is BatchSampler and hasattr(sampler, 'fast_forward'):
        sampler.fast_forward(num_batches * batch_sampler.batch_size)
        return True
    return False


def non_finite_terms(log_vars: dict) -> list[str]:
    """The names of the logged values (losses) that are NaN or inf; the total ``loss`` only
    when no term is named."""
    bad = [name for name, value in log_vars.items() if not math.isfinite(float(value))]
    return [name for name in bad if name != 'loss'] or bad


class _SafeTrainLoopMixin:
    """What both loops add to mmengine's (module docstring). Needs ``self.runner``,
    ``self.dataloader``, ``self._iter`` from the loop it is mixed into."""

    def _init_safety(self, max_consecutive_nonfinite: int) -> None:
        if max_consecutive_nonfinite < 1:
            raise ValueError('train_cfg.max_consecutive_nonfinite must be >= 1, got '
                             f'{max_consecutive_nonfinite}')
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self._nonfinite_iters: list[int] = []
        self._data_epoch = 0       # the sampler's epoch
        self._epoch_batches = 0    # batches of that epoch trained so far
        self._pending_resume: dict | None = None

    # ------------------------------------------------------------------ exact resume
    @property
    def _sampler(self):
        """The index sampler (under the batch sampler if there is one), if it has a state."""
        for sampler in (getattr(self.dataloader.batch_sampler, 'sampler', None),
                        self.dataloader.sampler):
            if hasattr(sampler, 'state_dict'):
                return sampler
        return None

    def resume_state(self) -> dict:
        """The data position and every rank's random generators (collective in a
        distributed run: every rank must call it)."""
        rng = capture_rng_state()
        rng_per_rank = all_gather_object(rng) if get_world_size() > 1 else [rng]
        sampler = self._sampler
        return dict(data=dict(epoch=self._data_epoch, batches=self._epoch_batches,
                              sampler=sampler.state_dict() if sampler else None),
                    rng=rng_per_rank)

    def load_resume_state(self, state: dict | None) -> None:
        """Continue from ``state`` (``resume_state()`` of the checkpoint) when ``run`` starts.
        ``None`` (a checkpoint without it, e.g. from mmengine): re-read the trained batches
        as mmengine does, and warn that the run will not be exact."""
        self._pending_resume = state or dict(data=None, rng=None)

    def _start_data(self) -> Iterator:
        """A new iterator over the data, at the resumed position if there is one."""
        pending = self._pending_resume or {}
        data = pending.get('data')
        skip_by_loading = 0
        if data is not None:
            sampler = self._sampler
            if sampler is not None and data['sampler'] is not None:
                sampler.load_state_dict(data['sampler'])
            self._data_epoch, self._epoch_batches = data['epoch'], data['batches']
            if not fast_forward_data(self.dataloader, self._epoch_batches):
                skip_by_loading = self._epoch_batches
        elif self._pending_resume is not None and self._iter > 0:
            self._data_epoch, self._epoch_batches = 0, self._iter
            skip_by_loading = self._iter
            print_log('the checkpoint has no resume_state (not saved by rcnn_det): re-reading '
                      f'{self._iter} batches to reach the data position; the resumed run will '
                      'not be identical to an uninterrupted one', logger='current',
                      level=logging.WARNING)
        with preserved_rng():
            iterator = iter(self.dataloader)
            for _ in range(skip_by_loading):
                next(iterator)
        if pending.get('rng') is not None:
            rng = pending['rng']
            if len(rng) != get_world_size():
                print_log(f'the checkpoint holds the random state of {len(rng)} processes, this '
                          f'run has {get_world_size()}: random streams continue from rank 0\'s',
                          logger='current', level=logging.WARNING)
            restore_rng_state(rng[get_rank() if get_rank() < len(rng) else 0])
        self._pending_resume = None
        return iterator

    def _validate(self) -> None:
        with preserved_rng():
            self.runner.val_loop.run()

    # ------------------------------------------------------------------ non-finite steps
    def _train_step(self, data_batch) -> dict:
        """``model.train_step``; a skipped step leaves the model's buffers as they were."""
        model, optim_wrapper = self.runner.model, self.runner.optim_wrapper
        guarded = hasattr(optim_wrapper, 'last_step_skipped')
        buffers = [b.detach().clone() for b in model.buffers()] if guarded else []
        outputs = model.train_step(data_batch, optim_wrapper=optim_wrapper)
        self._epoch_batches += 1
        if guarded and optim_wrapper.last_step_skipped:
            with torch.no_grad():
                for buffer, saved in zip(model.buffers(), buffers):
                    buffer.copy_(saved)
            self._on_skipped_step(outputs, optim_wrapper.last_grad_norm)
        else:
            self._nonfinite_iters = []
        return outputs

    def _on_skipped_step(self, outputs: dict, grad_norm: float) -> None:
        iteration = self._iter + 1
        self._nonfinite_iters.append(iteration)
        terms = non_finite_terms(outputs)
        what = f'non-finite loss terms: {", ".join(terms)}' if terms else \
            f'losses finite, gradient norm {grad_norm}'
        print_log(f'iteration {iteration}: optimizer step skipped ({what})', logger='current',
                  level=logging.WARNING)
        if len(self._nonfinite_iters) >= self.max_consecutive_nonfinite:
            last = self.runner.message_hub.get_info('last_ckpt')
            raise NonFiniteTrainingError(
                f'{len(self._nonfinite_iters)} iterations in a row '
                f'({self._nonfinite_iters[0]}-{iteration}) had a non-finite loss or gradient '
                f'(train_cfg.max_consecutive_nonfinite={self.max_consecutive_nonfinite}): '
                'training stopped. Lower the learning rate or check the data; last good '
                f'checkpoint: {last or "none (nothing was saved yet)"}')


@LOOPS.register_module()
class IterBasedTrainLoop(_SafeTrainLoopMixin, MMEngineIterBasedTrainLoop):
    """mmengine's ``IterBasedTrainLoop`` with exact resume and the non-finite guard (module
    docstring). Extra argument: ``max_consecutive_nonfinite`` (default 5)."""

    def __init__(self, runner, dataloader, max_iters: int, val_begin: int = 1,
                 val_interval: int = 1000, dynamic_intervals=None,
                 max_consecutive_nonfinite: int = 5) -> None:
        # mmengine's __init__ without its data iterator: that one would start the workers and
        # prefetch from the first batch; run() opens it at the resumed position instead.
        BaseLoop.__init__(self, runner, dataloader)
        if int(max_iters) != max_iters:
            raise ValueError(f'train_cfg.max_iters must be an integer, got {max_iters}')
        self._max_iters, self._max_epochs, self._epoch, self._iter = int(max_iters), 1, 0, 0
        self.val_begin, self.val_interval = val_begin, val_interval
        self.stop_training = False
        self.runner.visualizer.dataset_meta = getattr(self.dataloader.dataset, 'metainfo', None)
        self.dynamic_milestones, self.dynamic_intervals = calc_dynamic_intervals(
            val_interval, dynamic_intervals)
        self._init_safety(max_consecutive_nonfinite)
        self.dataloader_iterator = None

    def _next_batch(self):
        try:
            return next(self.dataloader_iterator)
        except StopIteration:  # a finite sampler: next epoch of it
            self._data_epoch += 1
            self._epoch_batches = 0
            if hasattr(self.dataloader.sampler, 'set_epoch'):
                self.dataloader.sampler.set_epoch(self._data_epoch)
            with preserved_rng():
                self.dataloader_iterator = iter(self.dataloader)
            return next(self.dataloader_iterator)

    def run(self) -> torch.nn.Module:
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')
        self.dataloader_iterator = self._start_data()
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            self.run_iter(self._next_batch())
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0 or self._iter == self._max_iters)):
                self._validate()
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model

    def run_iter(self, data_batch) -> None:
        self.runner.call_hook('before_train_iter', batch_idx=self._iter, data_batch=data_batch)
        outputs = self._train_step(data_batch)
        self.runner.call_hook('after_train_iter', batch_idx=self._iter, data_batch=data_batch,
                              outputs=outputs)
        self._iter += 1


@LOOPS.register_module()
class EpochBasedTrainLoop(_SafeTrainLoopMixin, MMEngineEpochBasedTrainLoop):
    """mmengine's ``EpochBasedTrainLoop`` with exact resume, also from the middle of an epoch,
    and the non-finite guard (module docstring). Extra argument: ``max_consecutive_nonfinite``
    (default 5)."""

    def __init__(self, runner, dataloader, max_epochs: int, val_begin: int = 1,
                 val_interval: int = 1, dynamic_intervals=None,
                 max_consecutive_nonfinite: int = 5) -> None:
        super().__init__(runner, dataloader, max_epochs, val_begin, val_interval,
                         dynamic_intervals)
        self._init_safety(max_consecutive_nonfinite)

    def run(self) -> torch.nn.Module:
        self.runner.call_hook('before_train')
        while self._epoch < self._max_epochs and not self.stop_training:
            self.run_epoch()
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None and self._epoch >= self.val_begin
                    and (self._epoch % self.val_interval == 0
                         or self._epoch == self._max_epochs)):
                self._validate()
        self.runner.call_hook('after_train')
        return self.runner.model

    def run_epoch(self) -> None:
        self.runner.call_hook('before_train_epoch')  # DistSamplerSeedHook: set_epoch
        self.runner.model.train()
        if self._pending_resume is None:
            self._data_epoch, self._epoch_batches = self._epoch, 0
        elif (self._pending_resume.get('data') or {}).get('epoch', self._epoch) != self._epoch:
            # saved at the end of the previous epoch: this one starts from its beginning
            self._pending_resume['data'] = dict(self._pending_resume['data'],
                                                epoch=self._epoch, batches=0)
        iterator = self._start_data()
        for idx, data_batch in enumerate(iterator, start=self._epoch_batches):
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1

    def run_iter(self, idx: int, data_batch) -> None:
        self.runner.call_hook('before_train_iter', batch_idx=idx, data_batch=data_batch)
        outputs = self._train_step(data_batch)
        self.runner.call_hook('after_train_iter', batch_idx=idx, data_batch=data_batch,
                              outputs=outputs)
        self._iter += 1
