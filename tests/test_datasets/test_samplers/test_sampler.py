"""rcnn_det's DefaultSampler / InfiniteSampler: mmengine's index order, a per-sample seed that
depends on (sampler seed, epoch, position) only, fast_forward == dropping the first indices,
state round trips, seeded_rng, and a dataset whose augmentations follow the index's seed."""
from __future__ import annotations

import itertools
import pickle
import random

import numpy as np
import pytest
import torch
from mmengine.dataset import DefaultSampler as MMEngineDefaultSampler
from mmengine.dataset import InfiniteSampler as MMEngineInfiniteSampler
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from conftest import TINY_SHAPES
from rcnn_det.datasets import AspectRatioBatchSampler, ShapesDataset
from rcnn_det.datasets.samplers import (DefaultSampler, InfiniteSampler, SampleIndex,
                                        sample_seed, seeded_rng)
from rcnn_det.engine.loops import fast_forward_data


class SizesDataset:
    """``n`` images; image i is landscape when ``i % 3 != 1`` (so batches are grouped)."""

    def __init__(self, n: int = 13) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: int) -> int:
        return int(idx)

    def get_data_info(self, idx: int) -> dict:
        return dict(width=100, height=120 if idx % 3 == 1 else 80)


def pairs(indices) -> list[tuple[int, int]]:
    """(index, seed) of every SampleIndex, failing on anything else."""
    out = []
    for idx in indices:
        assert type(idx) is SampleIndex, type(idx)
        out.append((int(idx), idx.seed))
    return out


def on_rank(monkeypatch, rank: int, world_size: int) -> None:
    """What mmengine's sampler __init__ reads as (rank, world_size) from now on."""
    monkeypatch.setattr('mmengine.dataset.sampler.get_dist_info', lambda: (rank, world_size))


# ---- mmengine's order, one seed per position -------------------------------------------------

@pytest.mark.parametrize('shuffle', [True, False])
@pytest.mark.parametrize('world_size', [1, 2])
@pytest.mark.parametrize('round_up', [True, False])
def test_default_sampler_order_is_mmengines(monkeypatch, shuffle, world_size, round_up):
    """Same indices as mmengine's for each rank and epoch; both ranks together cover the epoch;
    seed i is sample_seed(seed, epoch, rank + j * world_size), distinct over ranks and positions."""
    dataset = SizesDataset(13)
    for epoch in (0, 3):
        covered, seeds = [], []
        for rank in range(world_size):
            on_rank(monkeypatch, rank, world_size)
            ours = DefaultSampler(dataset, shuffle=shuffle, seed=7, round_up=round_up)
            theirs = MMEngineDefaultSampler(dataset, shuffle=shuffle, seed=7, round_up=round_up)
            assert (ours.rank, ours.world_size) == (rank, world_size)
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            got = pairs(ours)
            assert [i for i, _ in got] == list(theirs)
            assert len(got) == len(ours)
            assert [s for _, s in got] == [sample_seed(7, epoch, rank + j * world_size)
                                           for j in range(len(got))]
            covered += [i for i, _ in got]
            seeds += [s for _, s in got]
        assert set(covered) == set(range(13))
        assert len(covered) == (14 if round_up and world_size == 2 else 13)
        assert len(set(seeds)) == len(seeds)


@pytest.mark.parametrize('shuffle', [True, False])
@pytest.mark.parametrize('world_size', [1, 2])
def test_infinite_sampler_order_is_mmengines(monkeypatch, shuffle, world_size):
    """The first 40 indices of each rank are mmengine's (several passes over 13 images); the
    ranks' positions interleave into one stream whose seeds are all distinct."""
    dataset = SizesDataset(13)
    seeds_by_position = {}
    for rank in range(world_size):
        on_rank(monkeypatch, rank, world_size)
        ours = pairs(itertools.islice(InfiniteSampler(dataset, shuffle=shuffle, seed=5), 40))
        theirs = list(itertools.islice(MMEngineInfiniteSampler(dataset, shuffle=shuffle,
                                                               seed=5), 40))
        assert [i for i, _ in ours] == theirs
        for j, (_, seed) in enumerate(ours):
            position = rank + j * world_size
            assert seed == sample_seed(5, 0, position)
            seeds_by_position[position] = seed
    assert sorted(seeds_by_position) == list(range(40 * world_size))
    assert len(set(seeds_by_position.values())) == 40 * world_size


def test_sample_index_is_an_int_with_a_seed():
    """Pickling (to data-loader workers) keeps value and seed; arithmetic gives plain ints."""
    idx = SampleIndex(5, 123456789)
    assert isinstance(idx, int) and idx == 5 and idx.seed == 123456789
    back = pickle.loads(pickle.dumps(idx))
    assert type(back) is SampleIndex and back == 5 and back.seed == 123456789
    assert int(idx) == 5 and type(int(idx)) is int
    assert idx + 1 == 6 and idx * 2 == 10 and idx // 2 == 2
    assert [10, 11, 12, 13, 14, 15][idx] == 15 and hash(idx) == hash(5)
    assert {idx: 'a'}[5] == 'a'


def test_seed_depends_on_seed_epoch_position_only():
    """A new pass of the same epoch repeats the seeds; another epoch or sampler seed changes
    every one; the order (shuffle on/off) does not change them."""
    dataset = SizesDataset(13)
    sampler = DefaultSampler(dataset, shuffle=True, seed=3)
    first = pairs(sampler)
    assert pairs(sampler) == first
    plain = DefaultSampler(dataset, shuffle=False, seed=3)
    assert [s for _, s in pairs(plain)] == [s for _, s in first]
    sampler.set_epoch(1)
    other_epoch = pairs(sampler)
    assert all(a != b for (_, a), (_, b) in zip(first, other_epoch))
    other_seed = pairs(DefaultSampler(dataset, shuffle=True, seed=4))
    assert all(a != b for (_, a), (_, b) in zip(first, other_seed))
    assert 0 <= min(s for _, s in first) and max(s for _, s in first) < 2 ** 32


# ---- fast_forward == dropping the first indices, for the next pass only ------------------------

@pytest.mark.parametrize('world_size', [1, 2])
def test_default_sampler_fast_forward(monkeypatch, world_size):
    """fast_forward(n): the next pass is the full pass without its first n (index and seed);
    n beyond the pass gives an empty pass; the pass after that is full again."""
    on_rank(monkeypatch, world_size - 1, world_size)
    sampler = DefaultSampler(SizesDataset(13), shuffle=True, seed=2)
    sampler.set_epoch(5)
    full = pairs(sampler)
    for n in (0, 1, 4, len(full) - 1, len(full), len(full) + 3):
        sampler.fast_forward(n)
        assert pairs(sampler) == full[n:]
        assert pairs(sampler) == full


@pytest.mark.parametrize('world_size', [1, 2])
@pytest.mark.parametrize('n', [0, 1, 12, 13, 30])
def test_infinite_sampler_fast_forward(monkeypatch, world_size, n):
    """After fast_forward(n) the stream is a fresh stream without its first n, whatever had
    been drawn before (a resumed process)."""
    on_rank(monkeypatch, 0, world_size)
    dataset = SizesDataset(13)
    expected = pairs(itertools.islice(InfiniteSampler(dataset, seed=9), n, n + 50))
    sampler = InfiniteSampler(dataset, seed=9)
    list(itertools.islice(sampler, 7))  # already somewhere in the stream
    sampler.fast_forward(n)
    assert pairs(itertools.islice(sampler, 50)) == expected


def test_infinite_sampler_survives_a_closed_iterator():
    """Closing one iterator (a data-loader iterator replaced by a new one) leaves the shared
    stream open: the next iterator continues it. mmengine's ``yield from self.indices`` closes
    the stream with the first iterator."""
    dataset = SizesDataset(13)
    stream = pairs(itertools.islice(InfiniteSampler(dataset, seed=1), 20))
    sampler = InfiniteSampler(dataset, seed=1)
    first = iter(sampler)
    got = pairs(itertools.islice(first, 8))
    first.close()
    second = iter(sampler)
    got += pairs(itertools.islice(second, 12))
    assert got == stream

    theirs = MMEngineInfiniteSampler(dataset, seed=1)  # the regression this guards against
    first = iter(theirs)
    next(first)
    first.close()
    assert list(itertools.islice(iter(theirs), 3)) == []


def batch_pairs(batches) -> list[list[tuple[int, int]]]:
    return [pairs(batch) for batch in batches]


@pytest.mark.parametrize('batch_size', [2, 3])
def test_aspect_ratio_batch_sampler_fast_forward_default(batch_size):
    """fast_forward(k) on the batch sampler: its next pass is the full pass without the first k
    batches (same indices and seeds); the pass after is full again."""
    sampler = DefaultSampler(SizesDataset(13), shuffle=True, seed=0)
    batch_sampler = AspectRatioBatchSampler(sampler, batch_size)
    full = batch_pairs(batch_sampler)
    assert len(full) == len(batch_sampler)
    for k in range(len(full) + 2):
        batch_sampler.fast_forward(k)
        assert batch_pairs(batch_sampler) == full[k:]
        assert batch_pairs(batch_sampler) == full


@pytest.mark.parametrize('k', [0, 1, 5, 11])
def test_aspect_ratio_batch_sampler_fast_forward_infinite(k):
    """Over InfiniteSampler: a fresh batch sampler fast-forwarded by k yields what a fresh one
    yields after its first k batches."""
    dataset = SizesDataset(13)
    reference = AspectRatioBatchSampler(InfiniteSampler(dataset, seed=4), 3)
    expected = batch_pairs(itertools.islice(reference, k, k + 20))
    batch_sampler = AspectRatioBatchSampler(InfiniteSampler(dataset, seed=4), 3)
    batch_sampler.fast_forward(k)
    assert batch_pairs(itertools.islice(batch_sampler, 20)) == expected


def test_fast_forward_data_on_a_dataloader():
    """fast_forward_data: through the batch sampler's fast_forward, or the index sampler's
    (num_batches * batch_size indices) under torch's BatchSampler; False for samplers that
    cannot, which are left as they were."""
    dataset = SizesDataset(13)
    loader = DataLoader(dataset, batch_size=3, sampler=DefaultSampler(dataset, seed=1),
                        collate_fn=list)
    assert type(loader.batch_sampler) is BatchSampler
    full = list(loader)
    assert fast_forward_data(loader, 2)
    assert list(loader) == full[2:]
    assert list(loader) == full

    grouped = DataLoader(dataset, batch_sampler=AspectRatioBatchSampler(
        DefaultSampler(dataset, seed=1), 2), collate_fn=list)
    full = list(grouped)
    assert fast_forward_data(grouped, 3)
    assert list(grouped) == full[3:]

    plain = DataLoader(dataset, batch_size=3, sampler=SequentialSampler(dataset),
                       collate_fn=list)
    assert not fast_forward_data(plain, 2)
    assert len(list(plain)) == 5


# ---- state -----------------------------------------------------------------------------------

def test_default_sampler_state_round_trip():
    """state_dict is (seed, epoch); a sampler built with other values that loads it yields the
    same pass, seeds included."""
    dataset = SizesDataset(13)
    sampler = DefaultSampler(dataset, shuffle=True, seed=3)
    sampler.set_epoch(4)
    state = sampler.state_dict()
    assert state == dict(seed=3, epoch=4)
    other = DefaultSampler(dataset, shuffle=True, seed=99)
    assert pairs(other) != pairs(sampler)
    other.load_state_dict(state)
    assert (other.seed, other.epoch) == (3, 4)
    assert pairs(other) == pairs(sampler)


def test_infinite_sampler_state_round_trip():
    """Loading the state restarts the stream of the saved seed from its beginning (the data
    position is then set by fast_forward)."""
    dataset = SizesDataset(13)
    sampler = InfiniteSampler(dataset, seed=3)
    stream = pairs(itertools.islice(sampler, 30))
    assert sampler.state_dict() == dict(seed=3, epoch=0)
    other = InfiniteSampler(dataset, seed=99)
    list(itertools.islice(other, 5))
    other.load_state_dict(sampler.state_dict())
    assert pairs(itertools.islice(other, 30)) == stream


# ---- seeded_rng ----------------------------------------------------------------------------

def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_seeded_rng_draws_follow_the_seed():
    """Inside, each generator is seeded by the seed alone (compared with generators of their
    own seeded the same), whatever the global state was."""
    reference = (random.Random(11).random(), float(np.random.RandomState(11).rand()),
                 float(torch.rand(1, generator=torch.Generator().manual_seed(11))))
    for outside in (0, 1):
        random.seed(outside)
        np.random.seed(outside)
        torch.manual_seed(outside)
        with seeded_rng(11):
            assert draws() == reference
    with seeded_rng(12):
        assert all(a != b for a, b in zip(draws(), reference))


def test_seeded_rng_leaves_global_generators_where_they_were():
    """After the block, even one that raises, the next global draws are those without it."""
    def reseed():
        random.seed(77)
        np.random.seed(77)
        torch.manual_seed(77)

    reseed()
    draws()
    expected = draws()
    reseed()
    draws()
    with seeded_rng(5):
        draws()
    assert draws() == expected
    reseed()
    draws()
    with pytest.raises(KeyError):
        with seeded_rng(5):
            draws()
            raise KeyError('inside')
    assert draws() == expected


# ---- a dataset whose augmentations follow the index's seed ------------------------------------

PIPELINE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
            dict(type='RandomFlip', prob=0.5), dict(type='PackDetInputs')]


@pytest.fixture(scope='module')
def random_dataset(tiny_shapes_root) -> ShapesDataset:
    return ShapesDataset(data_root=str(tiny_shapes_root), shapes_cfg=TINY_SHAPES,
                         pipeline=PIPELINE)


def flipped(packed: dict) -> bool:
    return bool(packed['data_samples'].flip)


def test_dataset_augmentation_follows_the_sample_seed(random_dataset):
    """dataset[SampleIndex(i, s)] flips the same way for the same (i, s) whatever the global
    numpy state, leaves that state alone, and ~20 seeds give both outcomes; a plain int index
    uses (and moves) the global generator as mmengine's datasets do."""
    flips = {}
    for seed in range(20):
        np.random.seed(1000 + seed)
        first = flipped(random_dataset[SampleIndex(2, seed)])
        np.random.seed(seed)
        state = np.random.get_state()
        packed = random_dataset[SampleIndex(2, seed)]
        assert flipped(packed) == first
        assert np.random.get_state()[2] == state[2]
        assert np.array_equal(np.random.get_state()[1], state[1])
        flips[seed] = first
    assert set(flips.values()) == {True, False}
    # the seed decides, not the image: another image with the same seed flips the same way
    assert all(flipped(random_dataset[SampleIndex(5, s)]) == f for s, f in flips.items())

    outcomes = set()
    np.random.seed(0)
    for _ in range(20):
        packed = random_dataset[2]
        assert packed['data_samples'].img_path.endswith('000002.png')
        outcomes.add(flipped(packed))
    assert outcomes == {True, False}
