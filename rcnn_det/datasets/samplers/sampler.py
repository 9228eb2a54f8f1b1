"""``DefaultSampler`` and ``InfiniteSampler`` (mmengine's names, orders and arguments) whose
indices carry the seed of their sample's random augmentations, and which can start mid-epoch.

Why: a training run resumed from a checkpoint must see the same images with the same random
augmentations as the uninterrupted run. mmengine re-reads every trained batch to get back to the
data position (hours on COCO), and its data-loader workers draw augmentations from per-worker
generators whose state a checkpoint cannot hold. Here

- each index is a ``SampleIndex``: an ``int`` with a ``seed`` derived from (sampler seed, epoch,
  position in the epoch's sample stream), and the dataset runs its pipeline for that index with
  every generator seeded by it (``seeded_rng``). A sample's augmentation depends only on its
  position, not on which worker loads it or what that worker loaded before;
- ``fast_forward(n)`` makes the next pass start after the first ``n`` indices of the epoch, which
  costs index arithmetic only; ``state_dict`` / ``load_state_dict`` carry ``seed`` and ``epoch``.

The order of the indices is mmengine's for the same seed, world size and rank.
"""
from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Iterator

import numpy as np
import torch
from mmengine.dataset import DefaultSampler as MMEngineDefaultSampler
from mmengine.dataset import InfiniteSampler as MMEngineInfiniteSampler

from rcnn_det.registry import DATA_SAMPLERS


class SampleIndex(int):
    """A dataset index (an ``int``) with the ``seed`` of its sample's augmentations."""

    seed: int

    def __new__(cls, index: int, seed: int) -> 'SampleIndex':
        obj = super().__new__(cls, index)
        obj.seed = seed
        return obj

    def __reduce__(self):  # to data-loader workers and back, seed included
        return SampleIndex, (int(self), self.seed)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 32-bit seed for the sample at ``position`` of ``epoch``'s stream (all ranks counted)."""
    entropy = [seed & 0xFFFFFFFFFFFFFFFF, epoch, position]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run the block with Python's, numpy's and torch's CPU generators seeded by ``seed``; put
    them back afterwards, so the process's own random streams do not move."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)


@DATA_SAMPLERS.register_module()
class DefaultSampler(MMEngineDefaultSampler):
    """mmengine's ``DefaultSampler`` (shuffled with ``seed + epoch``, this rank's every
    ``world_size``-th index, ``round_up``), yielding ``SampleIndex`` and able to start mid-epoch.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._skip = 0

    def __iter__(self) -> Iterator[SampleIndex]:
        order = list(super().__iter__())
        skip, self._skip = self._skip, 0
        for j in range(skip, len(order)):
            position = self.rank + j * self.world_size
            yield SampleIndex(order[j], sample_seed(self.seed, self.epoch, position))

    def fast_forward(self, num_indices: int) -> None:
        """The next pass starts after this rank's first ``num_indices`` indices of the epoch."""
        self._skip = num_indices

    def state_dict(self) -> dict:
        return dict(seed=self.seed, epoch=self.epoch)

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch = state['seed'], state['epoch']


@DATA_SAMPLERS.register_module()
class InfiniteSampler(MMEngineInfiniteSampler):
    """mmengine's ``InfiniteSampler`` (one endless stream of shuffled passes from ``seed``, this
    rank's every ``world_size``-th index), yielding ``SampleIndex``; ``fast_forward`` restarts
    the stream after its first ``num_indices`` indices."""

    def _indices_of_rank(self, skip: int = 0) -> Iterator[SampleIndex]:
        stream = enumerate(self._infinite_indices())
        start = self.rank + skip * self.world_size
        for position, index in itertools.islice(stream, start, None, self.world_size):
            yield SampleIndex(index, sample_seed(self.seed, 0, position))

    def __iter__(self) -> Iterator[SampleIndex]:
        # Not mmengine's `yield from self.indices`: closing a finished pass (a data-loader
        # iterator replaced by a new one) would close the shared stream with it.
        indices = self.indices
        while True:
            yield next(indices)

    def fast_forward(self, num_indices: int) -> None:
        self.indices = self._indices_of_rank(skip=num_indices)

    def state_dict(self) -> dict:
        return dict(seed=self.seed, epoch=0)

    def load_state_dict(self, state: dict) -> None:
        self.seed = state['seed']
        self.indices = self._indices_of_rank()
