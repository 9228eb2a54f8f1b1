"""The random number generators of a training process, captured and restored exactly.

A resumed run ends bit-identical to the uninterrupted one only if every generator that training
draws from continues where it stopped: Python's ``random``, numpy's global generator, torch's CPU
generator (RoI sampling, dropout, ...) and each CUDA device's. ``capture_rng_state`` returns them
in a form that ``torch.load(weights_only=True)`` reads back (tensors, ints, floats, tuples), and
``preserved_rng`` runs a block (validation, the creation of a data-loader iterator) without
moving any of them, so that how often a run validates cannot change what it trains.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def capture_rng_state() -> dict:
    """The state of every generator of this process."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = dict(
        python=random.getstate(),
        numpy=dict(kind=kind, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                   has_gauss=int(has_gauss), cached_gaussian=float(cached_gaussian)),
        torch=torch.get_rng_state(),
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Put every generator back to ``state`` (from ``capture_rng_state``)."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    numpy = state['numpy']
    np.random.set_state((numpy['kind'], numpy['keys'].numpy().astype(np.uint32), numpy['pos'],
                         numpy['has_gauss'], numpy['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        cuda_states = state['cuda']
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:  # another number of visible GPUs: restore the ones both runs have
            for device, cuda_state in enumerate(cuda_states[:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, device)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block, then put every generator back where it was before it."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)
