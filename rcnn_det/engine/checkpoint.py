"""Saving and resuming mmengine checkpoints with ``torch.load(weights_only=True)``.

Since PyTorch 2.6 ``torch.load`` unpickles only allow-listed types by default, and mmengine
0.10's checkpoints hold more than tensors: the message hub's ``HistoryBuffer`` objects (numpy
arrays of logged scalars) and numpy scalars in the runtime info. Worse, ``HistoryBuffer``
pickles its statistics methods by reference, as ``getattr(HistoryBuffer, 'min')`` calls, and
allow-listing ``getattr`` would let a checkpoint call anything reachable from an allowed type.
So rcnn_det (1) saves ``HistoryBuffer`` without those method references, which its own
``__setstate__`` already rebuilds from the class, and (2) allow-lists exactly the numpy types and
``HistoryBuffer``. Anything else in a checkpoint is still refused.
"""
from __future__ import annotations

import numpy as np
import torch
from mmengine.logging import HistoryBuffer


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
    """Make mmengine checkpoints load with ``weights_only=True``; idempotent."""
    HistoryBuffer.__getstate__ = _history_buffer_state
    torch.serialization.add_safe_globals(checkpoint_safe_globals())
