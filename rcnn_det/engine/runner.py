"""``DetRunner``: mmengine's Runner as rcnn_det's tools use it, where losing work is at stake.

It differs from mmengine's ``Runner`` in four places, each a documented method of mmengine's:

- ``save_checkpoint`` writes straight into a temporary file, fsyncs and renames it into place
  (``atomic_io``): never a truncated checkpoint under its final name, and 1.5-2x faster than
  mmengine's copy through an in-memory buffer;
- ``load_checkpoint`` names the file in every error and, when resuming or testing, refuses a
  checkpoint that does not fit the model (mmengine loads with ``strict=False`` and trains or
  evaluates a half-loaded model); ``load_from`` for training (fine-tuning) keeps mmengine's
  warn-and-skip;
- ``resume`` also checks the optimizer state against the parameters, and hands the checkpoint's
  ``resume_state`` (data position, random generators) to the train loop;
- ``load_or_resume`` with ``--resume`` and no file: ``find_resume_checkpoint`` takes the file
  ``last_checkpoint`` names, else the newest readable checkpoint of the work dir, with a
  WARNING naming both; with nothing to resume, a WARNING naming the work dir.
"""
from __future__ import annotations

import glob
import os.path as osp
import re
import time
import zipfile

import mmengine
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper
from mmengine.runner import Runner, weights_to_cpu
from mmengine.utils import apply_to, get_git_hash

from rcnn_det.engine.atomic_io import atomic_torch_save
from rcnn_det.engine.checkpoint import (CheckpointMismatchError, load_checkpoint_file,
                                        load_state_dict_strict, register_checkpoint_safe_globals)
from rcnn_det.registry import RUNNERS


def is_readable_checkpoint(path: str) -> bool:
    """A complete file of ``torch.save``'s zip format (a truncated one has no central
    directory); the tensors themselves are read when it is loaded."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _step_of(path: str) -> int:
    """The number in a checkpoint's name (iter_10.pth -> 10), -1 without one."""
    numbers = re.findall(r'\d+', osp.basename(path))
    return int(numbers[-1]) if numbers else -1


def find_resume_checkpoint(work_dir: str) -> str | None:
    """The checkpoint ``--resume`` continues from (module docstring); None if there is none."""
    named = None
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
    if named is not None and is_readable_checkpoint(named):
        return named
    folders = {work_dir} | ({osp.dirname(named)} if named else set())
    candidates = [path for folder in folders for path in glob.glob(osp.join(folder, '*.pth'))]
    candidates.sort(key=lambda path: (osp.getmtime(path), _step_of(path)), reverse=True)
    newest = next((path for path in candidates if is_readable_checkpoint(path)), None)
    if named is not None:
        problem = 'is missing' if not osp.exists(named) else 'is not a complete checkpoint'
        print_log(f'{pointer} names {named}, which {problem}; resuming from '
                  f'{newest or "nothing"} instead', logger='current', level=30)
    elif newest is not None:
        print_log(f'{work_dir} has no last_checkpoint file; resuming from its newest readable '
                  f'checkpoint {newest}', logger='current', level=30)
    return newest


# Optimizer states shaped like their parameter (SGD, Adam(W), Adagrad, RMSprop, ...); others,
# such as Adafactor's row/column statistics or LBFGS's flat vectors, have shapes of their own.
PARAMETER_SHAPED_STATES = ('momentum_buffer', 'exp_avg', 'exp_avg_sq', 'max_exp_avg_sq',
                           'square_avg', 'acc_delta', 'sum', 'ax', 'prev', 'step_size',
                           'exp_inf', 'grad_avg')


def check_optimizer_state_fits(optim_wrapper: OptimWrapper, state: dict, filename: str) -> None:
    """Raise ``CheckpointMismatchError`` naming ``filename`` when the saved optimizer state does
    not belong to these parameters (group sizes, state tensor shapes)."""
    params = [p for group in optim_wrapper.optimizer.param_groups for p in group['params']]
    saved_groups = state.get('param_groups', [])
    sizes = [len(group['params']) for group in optim_wrapper.optimizer.param_groups]
    saved_sizes = [len(group['params']) for group in saved_groups]
    if sizes != saved_sizes:
        raise CheckpointMismatchError(
            f'{filename}: the optimizer state has parameter groups of {saved_sizes} tensors, '
            f'the model\'s optimizer {sizes}: it was saved for another model')
    for index, param_state in state.get('state', {}).items():
        for name, value in param_state.items():
            shape = tuple(params[index].shape)
            if name in PARAMETER_SHAPED_STATES and hasattr(value, 'shape') and \
                    tuple(value.shape) != shape:
                raise CheckpointMismatchError(
                    f'{filename}: optimizer state {name!r} of parameter {index} has shape '
                    f'{tuple(value.shape)}, the parameter {shape}')


def _to_cpu(tree):
    """Every tensor of a nested structure, on the CPU (as mmengine saves them)."""
    return apply_to(tree, lambda x: hasattr(x, 'cpu'), lambda x: x.cpu())


@RUNNERS.register_module()
class DetRunner(Runner):
    """mmengine's ``Runner`` with safe saving, strict resuming and exact resume (module
    docstring). Built by ``tools/train.py`` and ``tools/test.py`` unless the config names a
    ``runner_type``."""

    writes_checkpoints_atomically = True  # CheckpointHook needs no atomic file backend

    def __init__(self, *args, **kwargs) -> None:
        register_checkpoint_safe_globals()
        super().__init__(*args, **kwargs)
        self._resuming = False
        self._testing = False

    def save_checkpoint(self, out_dir: str, filename: str, file_client_args: dict | None = None,
                        save_optimizer: bool = True, save_param_scheduler: bool = True,
                        meta: dict | None = None, by_epoch: bool = True,
                        backend_args: dict | None = None) -> None:
        if file_client_args is not None or backend_args is not None or '://' in str(out_dir):
            return super().save_checkpoint(out_dir, filename, file_client_args, save_optimizer,
                                           save_param_scheduler, meta, by_epoch, backend_args)
        if not mmengine.dist.is_main_process():
            return None
        meta = dict(meta or {})
        meta.setdefault('epoch', self.epoch + 1 if by_epoch else self.epoch)
        meta.setdefault('iter', self.iter if by_epoch else self.iter + 1)
        meta.update(cfg=self.cfg.pretty_text, seed=self.seed,
                    experiment_name=self.experiment_name,
                    time=time.strftime('%Y%m%d_%H%M%S', time.localtime()),
                    mmengine_version=mmengine.__version__ + get_git_hash())
        if hasattr(self.train_dataloader.dataset, 'metainfo'):
            meta.update(dataset_meta=self.train_dataloader.dataset.metainfo)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        checkpoint = dict(meta=meta, state_dict=weights_to_cpu(model.state_dict()),
                          message_hub=_to_cpu(self.message_hub.state_dict()))
        if save_optimizer:
            checkpoint['optimizer'] = _to_cpu(self.optim_wrapper.state_dict())
        if save_param_scheduler and self.param_schedulers is not None:
            schedulers = self.param_schedulers
            checkpoint['param_schedulers'] = (
                {name: [s.state_dict() for s in group] for name, group in schedulers.items()}
                if isinstance(schedulers, dict) else [s.state_dict() for s in schedulers])
        self.call_hook('before_save_checkpoint', checkpoint=checkpoint)
        atomic_torch_save(checkpoint, osp.join(out_dir, filename))
        return None

    def load_checkpoint(self, filename: str, map_location='cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]) -> dict:  # noqa: B006
        checkpoint = load_checkpoint_file(filename, map_location=map_location)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        if strict or self._resuming or self._testing:
            load_state_dict_strict(model, checkpoint, filename)
        else:  # fine-tuning (load_from): mmengine's warn-and-skip for what does not fit
            mmengine.runner.checkpoint._load_checkpoint_to_model(
                model, checkpoint, strict=False, revise_keys=revise_keys)
        if self._resuming:
            if 'optimizer' in checkpoint:
                check_optimizer_state_fits(self.optim_wrapper, checkpoint['optimizer'], filename)
            if hasattr(self.train_loop, 'load_resume_state'):
                self.train_loop.load_resume_state(checkpoint.get('resume_state'))
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    def resume(self, filename: str, resume_optimizer: bool = True,
               resume_param_scheduler: bool = True, map_location='default') -> None:
        self._resuming = True
        try:
            super().resume(filename, resume_optimizer, resume_param_scheduler, map_location)
        finally:
            self._resuming = False

    def test(self) -> dict:
        """mmengine's ``test``; its checkpoint (``load_from``) must fit the model exactly: the
        mAP of a half-loaded model would mean nothing."""
        self._testing = True
        try:
            return super().test()
        finally:
            self._testing = False

    def load_or_resume(self) -> None:
        if self._has_loaded:
            return None
        if self._resume and self._load_from is None:
            found = find_resume_checkpoint(self.work_dir)
            if found is None:
                print_log(f'--resume: no checkpoint in {self.work_dir} to resume from; '
                          'training starts from scratch', logger='current', level=30)
                return None
            self._load_from = found
            self.logger.info(f'Resuming from the latest checkpoint {found}')
        return super().load_or_resume()
