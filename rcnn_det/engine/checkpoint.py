"""Reading checkpoints safely, loading them strictly, and saving mmengine checkpoints that
``torch.load(weights_only=True)`` reads back.

Reading. Since PyTorch 2.6 ``torch.load`` unpickles only allow-listed types by default, and
mmengine 0.10's checkpoints hold more than tensors: the message hub's ``HistoryBuffer`` objects
(numpy arrays of logged scalars) and numpy scalars in the runtime info. Worse, ``HistoryBuffer``
pickles its statistics methods by reference, as ``getattr(HistoryBuffer, 'min')`` calls, and
allow-listing ``getattr`` would let a checkpoint call anything reachable from an allowed type.
So rcnn_det (1) saves ``HistoryBuffer`` without those method references, which its own
``__setstate__`` already rebuilds from the class, and (2) allow-lists exactly the numpy types and
``HistoryBuffer``. Anything else in a checkpoint is still refused.

``register_checkpoint_safe_globals`` is the one place that does both; importing rcnn_det does
not. ``load_checkpoint_file`` calls it; so do ``tools/train.py`` and ``tools/test.py`` (and
rcnn_det's runner), whose mmengine Runner saves checkpoints and loads ``load_from`` / ``--resume``
with mmengine's own ``torch.load``. A process that saves checkpoints without having called it
writes ``HistoryBuffer`` method references that a ``weights_only`` load refuses.

Loading. ``load_checkpoint_file`` names the file in every error (missing, truncated or corrupt,
refused, not a checkpoint); ``load_state_dict_strict`` refuses a state dict that does not fit
the model, listing the keys and shapes that differ, and leaves the model unchanged then.
"""
from __future__ import annotations

import os
import os.path as osp
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
from mmengine.fileio import get_local_path
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseTTAModel, is_model_wrapper
from torch import nn
from torch.overrides import TorchFunctionMode

MAX_LISTED = 5  # keys of each kind a mismatch message lists before '... and N more'


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (unreadable, refused, not a checkpoint, or not fitting
    the model); the message names the file."""


class CheckpointRefusedError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint whose pickle holds types other than tensors and the allow-listed ones: not
    unpickled, since unpickling them could run code. Also a ``pickle.UnpicklingError``, which
    is what ``torch.load(weights_only=True)`` raises."""


class CheckpointMismatchError(CheckpointError):
    """A state dict that does not fit the model. ``missing_keys`` (the model's, not in the
    checkpoint), ``unexpected_keys`` (the checkpoint's, not in the model) and
    ``shape_mismatches`` ([(key, checkpoint shape, model shape)]) hold the full lists."""

    def __init__(self, message: str, missing_keys=(), unexpected_keys=(),
                 shape_mismatches=()) -> None:
        super().__init__(message)
        self.missing_keys = list(missing_keys)
        self.unexpected_keys = list(unexpected_keys)
        self.shape_mismatches = list(shape_mismatches)


def _numpy_reconstructors() -> list:
    core = getattr(np, '_core', None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    return [core.multiarray._reconstruct, core.multiarray.scalar]


def checkpoint_safe_globals() -> list:
    """The non-tensor types found in mmengine 0.10 checkpoints (see the module docstring)."""
    numpy_dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64,
                                                np.int32, np.int8, np.uint8, np.bool_)]
    return [HistoryBuffer, np.ndarray, np.dtype, *numpy_dtypes, *_numpy_reconstructors()]


def _history_buffer_state(self: HistoryBuffer) -> dict:
    # mmengine's __getstate__ adds the class-level method table (functions, pickled as getattr
    # calls); the data is everything else. __setstate__ restores the default methods, and custom
    # ones are registered on the class by the code that defines them.
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    return state


def register_checkpoint_safe_globals() -> None:
    """Make mmengine checkpoints save and load with ``weights_only=True``; idempotent. The one
    place that does so (see the module docstring): call it before a Runner saves or loads."""
    HistoryBuffer.__getstate__ = _history_buffer_state
    torch.serialization.add_safe_globals(checkpoint_safe_globals())


# What torch.load(weights_only=True) says when the pickle names something not allow-listed
# (rather than when the file is damaged).
_REFUSED = re.compile(r'GLOBAL (\S+) was not an allowed global|unsupported GLOBAL (\S+) whose '
                      r'module|reduce for unrecognized function (.+?)(?: which belongs|$)|'
                      r'Can only create new object .* but got (.+)$', re.MULTILINE)


def _unpickler_message(error: Exception) -> str:
    """The unpickler's own words, without torch's advice to turn the weights-only safety off."""
    message = str(error)
    if 'WeightsUnpickler error:' in message:
        message = message.split('WeightsUnpickler error:', 1)[1].strip().split('\n\n')[0]
    return f'{type(error).__name__}: {message}' if message else type(error).__name__


def load_checkpoint_file(filename: str | os.PathLike, map_location='cpu') -> dict:
    """Read a checkpoint file (or a URL mmengine's file backends read) with
    ``torch.load(weights_only=True)`` and rcnn_det's allow-list, never without it.

    Returns what ``torch.save`` wrote: an mmengine checkpoint (``state_dict``, ``meta``,
    ``optimizer``, ...) or a bare state dict. Every error names the file:
        FileNotFoundError        'checkpoint not found: {filename}'
        CheckpointRefusedError   'refused to load checkpoint {filename}: it holds {name}, which
                                 is neither a tensor nor a type allow-listed in
                                 rcnn_det/engine/checkpoint.py (unpickling it could run code)'
        CheckpointError          'cannot read checkpoint {filename} (a truncated or corrupt
                                 file?): {error}' or 'checkpoint {filename} is not a checkpoint:
                                 ...' (a pickle of something other than a dict)
    """
    filename = str(filename)
    if '://' not in filename and not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint not found: {filename}')
    register_checkpoint_safe_globals()
    with get_local_path(filename) as local_path:  # a URL: downloaded (its errors are mmengine's)
        try:
            loaded = torch.load(local_path, map_location=map_location, weights_only=True)
        except MemoryError:
            raise
        except pickle.UnpicklingError as e:
            refused = _REFUSED.search(str(e))
            if refused is None:
                raise CheckpointError(f'cannot read checkpoint {filename} (a truncated or '
                                      f'corrupt file?): {_unpickler_message(e)}') from e
            name = next(group for group in refused.groups() if group)
            raise CheckpointRefusedError(
                f'refused to load checkpoint {filename}: it holds {name}, which is neither a '
                'tensor nor a type allow-listed in rcnn_det/engine/checkpoint.py (unpickling it '
                'could run code)') from None
        except Exception as e:  # torch reports damage as OSError, RuntimeError, EOFError, ...
            raise CheckpointError(f'cannot read checkpoint {filename} (a truncated or corrupt '
                                  f'file?): {_unpickler_message(e)}') from e
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f'checkpoint {filename} is not a checkpoint: it holds a '
                              f'{type(loaded).__name__}, not a dict (an mmengine checkpoint or '
                              'a state dict)')
    if 'state_dict' in loaded and not isinstance(loaded['state_dict'], Mapping):
        raise CheckpointError(f'checkpoint {filename} is not a checkpoint: its state_dict is a '
                              f'{type(loaded["state_dict"]).__name__}, not a dict')
    return loaded


class _SkipCopies(TorchFunctionMode):
    """``Tensor.copy_`` does nothing: ``load_state_dict`` checks keys and shapes (after the
    modules' own load hooks renamed keys) but writes no value into the model."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.copy_:
            return args[0]
        return func(*args, **(kwargs or {}))


def _strip_ddp_prefix(state_dict: Mapping) -> Mapping:
    """Keys without DDP's ``module.`` when every key has it (mmengine's ``revise_keys``), and
    the state dict's ``_metadata`` (module versions) renamed the same way."""
    if not state_dict or not all(key.startswith('module.') for key in state_dict):
        return state_dict
    stripped = OrderedDict((key[len('module.'):], value) for key, value in state_dict.items())
    metadata = getattr(state_dict, '_metadata', None)
    if metadata is not None:  # module prefixes: 'module' is the model itself, '' the wrapper
        stripped._metadata = OrderedDict(
            (prefix[len('module.'):] if prefix != 'module' else '', value)
            for prefix, value in metadata.items()
            if prefix == 'module' or prefix.startswith('module.'))
    return stripped


_LOAD_ERROR = 'Error(s) in loading state_dict for '
_SIZE_MISMATCH = re.compile(r'size mismatch for (.+?): copying a param with shape '
                            r'torch\.Size\(\[([\d, ]*)\]\) from checkpoint, the shape in current '
                            r'model is torch\.Size\(\[([\d, ]*)\]\)\.$')


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split(',') if n.strip())


def _dry_run(model: nn.Module, state_dict: Mapping) -> tuple[list, list, list, list]:
    """``model.load_state_dict(state_dict, strict=True)`` without copying any value:
    (missing keys, unexpected keys, [(key, checkpoint shape, model shape)], other errors)."""
    found = {}

    def record(module, incompatible) -> None:  # the last post-hook of the root: the final lists
        found.update(missing=list(incompatible.missing_keys),
                     unexpected=list(incompatible.unexpected_keys))

    handle = model.register_load_state_dict_post_hook(record)
    errors = []
    try:
        with _SkipCopies():
            model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        if not str(e).startswith(_LOAD_ERROR):
            raise
        errors = [line for line in str(e).split('\n\t')[1:]
                  if not line.startswith(('Missing key(s)', 'Unexpected key(s)'))]
    finally:
        handle.remove()
    shapes, others = [], []
    for line in errors:
        size = _SIZE_MISMATCH.match(line.strip())
        if size:
            shapes.append((size[1], _shape(size[2]), _shape(size[3])))
        else:
            others.append(line.strip())
    return found.get('missing', []), found.get('unexpected', []), shapes, others


def _listed(items: list[str], noun: str, plural: str, note: str) -> list[str]:
    """'  N noun(s) (note):' and up to MAX_LISTED items, one a line, then '... and M more'."""
    if not items:
        return []
    lines = [f'  {len(items)} {noun if len(items) == 1 else plural} ({note}):']
    lines += [f'    {item}' for item in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f'    ... and {len(items) - MAX_LISTED} more')
    return lines


def load_state_dict_strict(model: nn.Module, checkpoint: Mapping,
                           filename: str | os.PathLike) -> None:
    """Load ``checkpoint['state_dict']`` (or ``checkpoint`` itself, a bare state dict) into
    ``model`` (an mmengine model wrapper: into its ``.module``), every key and shape exactly.

    DDP's ``module.`` prefix is dropped when every key has it. Whether the state dict fits is
    decided by ``model.load_state_dict(strict=True)`` itself, so the modules' load hooks count
    (mmdetection 3.x Deformable DETR names are renamed by the model): first in a dry run that
    copies no value, then, only if it fits, for real. So when this raises
    ``CheckpointMismatchError`` the model is unchanged, with one exception: a value whose key and
    shape fit but that torch cannot copy (a meta tensor) fails the real load part-way, and that
    message says the model may be partly loaded. Keys are listed as the model names them, after
    its own renaming.

    The message names ``filename`` and lists up to 5 keys of each kind, then '... and N more':
        checkpoint {filename} does not fit the model ({model class}); the model is unchanged:
          {n} shape mismatch(es) (checkpoint vs model):
            {key}: checkpoint ({shape}) vs model ({shape})
          {n} missing key(s) (in the model, not in the checkpoint):
            {key}
          {n} unexpected key(s) (in the checkpoint, not in the model):
            {key}
          {n} other error(s) (torch's words):
            {torch's message}
    """
    # a DDP wrapper or a test-time augmentation model: the detector inside
    module = (model.module if is_model_wrapper(model) or isinstance(model, BaseTTAModel)
              else model)
    state_dict = checkpoint['state_dict'] if 'state_dict' in checkpoint else checkpoint
    state_dict = _strip_ddp_prefix(state_dict)
    missing, unexpected, shapes, others = _dry_run(module, state_dict)
    name = type(module).__name__
    if missing or unexpected or shapes or others:
        lines = [f'checkpoint {filename} does not fit the model ({name}); the model is '
                 'unchanged:']
        shape_lines = [f'{key}: checkpoint {ckpt} vs model {ours}' for key, ckpt, ours in shapes]
        lines += _listed(shape_lines, 'shape mismatch', 'shape mismatches', 'checkpoint vs model')
        lines += _listed(missing, 'missing key', 'missing keys', 'in the model, not in the '
                         'checkpoint')
        lines += _listed(unexpected, 'unexpected key', 'unexpected keys', 'in the checkpoint, '
                         'not in the model')
        lines += _listed(others, 'other error', 'other errors', "torch's words")
        raise CheckpointMismatchError('\n'.join(lines), missing, unexpected, shapes)
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointMismatchError(f'checkpoint {filename} does not fit the model ({name}); '
                                      f'the model may be partly loaded: {e}') from e
