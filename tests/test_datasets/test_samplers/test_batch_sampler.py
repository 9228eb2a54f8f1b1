"""AspectRatioBatchSampler: orientation groups, every index once, mmengine samplers, DDP shards."""
from __future__ import annotations

import itertools

import pytest
from mmengine.dataset import DefaultSampler, InfiniteSampler
from torch.utils.data import DataLoader, Sampler

from rcnn_det.datasets import AspectRatioBatchSampler
from rcnn_det.registry import DATA_SAMPLERS


class SizesDataset:
    """Image i is landscape (w >= h) when ``landscape[i]``; image 12 is square (landscape)."""

    def __init__(self, landscape: list[bool]) -> None:
        self.landscape = landscape

    def __len__(self) -> int:
        return len(self.landscape)

    def __getitem__(self, idx: int) -> int:
        return idx

    def get_data_info(self, idx: int) -> dict:
        return dict(width=100, height=100 if idx == 12 else 80 if self.landscape[idx] else 120)


# 13 images: 8 landscape (0, 2, 3, 5, 8, 9, 11, 12), 5 portrait (1, 4, 6, 7, 10).
LANDSCAPE = [True, False, True, True, False, True, False, False, True, True, False, True, True]


def is_uniform(batch: list[int], dataset: SizesDataset) -> bool:
    return len({dataset.landscape[i] for i in batch}) == 1


@pytest.mark.parametrize('batch_size', [1, 2, 3, 5])
def test_every_index_once_and_groups(batch_size):
    dataset = SizesDataset(LANDSCAPE)
    sampler = DefaultSampler(dataset, shuffle=True, seed=3)
    batch_sampler = AspectRatioBatchSampler(sampler, batch_size)
    batches = list(batch_sampler)
    assert sorted(itertools.chain(*batches)) == list(range(len(dataset)))
    assert len(batches) == len(batch_sampler) == -(-len(dataset) // batch_size)
    full = [b for b in batches if len(b) == batch_size]
    # Only the leftovers at the end of the epoch (at most two batches) may mix orientations.
    assert all(is_uniform(b, dataset) for b in batches[:-2])
    assert all(len(b) == batch_size for b in batches[:-1])
    assert len(full) >= len(batches) - 1


def test_groups_with_known_order():
    dataset = SizesDataset(LANDSCAPE)
    batches = list(AspectRatioBatchSampler(DefaultSampler(dataset, shuffle=False), 2))
    assert batches == [[0, 2], [1, 4], [3, 5], [6, 7], [8, 9], [11, 12], [10]]


@pytest.mark.parametrize('num', [12, 13, 14])
def test_drop_last(num):
    dataset = SizesDataset((LANDSCAPE * 2)[:num])
    sampler = DefaultSampler(dataset, shuffle=False)
    batch_sampler = AspectRatioBatchSampler(sampler, 4, drop_last=True)
    batches = list(batch_sampler)
    assert all(len(b) == 4 for b in batches)
    assert len(batches) == len(batch_sampler) == num // 4
    assert len(set(itertools.chain(*batches))) == len(batches) * 4


def test_infinite_sampler_keeps_grouping():
    dataset = SizesDataset(LANDSCAPE)
    batches = list(itertools.islice(AspectRatioBatchSampler(InfiniteSampler(dataset, seed=0),
                                                            3), 20))
    assert all(len(b) == 3 and is_uniform(b, dataset) for b in batches)


def test_distributed_shards(monkeypatch):
    dataset = SizesDataset(LANDSCAPE)
    seen = []
    for rank in range(2):
        monkeypatch.setattr('mmengine.dataset.sampler.get_dist_info', lambda r=rank: (r, 2))
        sampler = DefaultSampler(dataset, shuffle=True, seed=1, round_up=False)
        batches = list(AspectRatioBatchSampler(sampler, 2))
        assert sorted(itertools.chain(*batches)) == sorted(sampler)  # exactly this rank's shard
        seen += list(itertools.chain(*batches))
    assert sorted(seen) == list(range(len(dataset)))


def test_built_like_the_runner_and_used_by_a_dataloader():
    dataset = SizesDataset(LANDSCAPE)
    sampler = DefaultSampler(dataset, shuffle=False)
    batch_sampler = DATA_SAMPLERS.build(dict(type='AspectRatioBatchSampler'),
                                        default_args=dict(sampler=sampler, batch_size=2))
    assert isinstance(batch_sampler, AspectRatioBatchSampler)
    assert batch_sampler.sampler is sampler  # mmengine's loops call .sampler.set_epoch
    loader = DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=list)
    assert sorted(itertools.chain(*loader)) == list(range(len(dataset)))


class NoDatasetSampler(Sampler):
    def __iter__(self):
        return iter(range(3))


def test_bad_arguments():
    with pytest.raises(TypeError, match='torch Sampler'):
        AspectRatioBatchSampler([0, 1], 2)
    with pytest.raises(TypeError, match='no `dataset`'):
        AspectRatioBatchSampler(NoDatasetSampler(), 2)
    with pytest.raises(ValueError, match='positive int'):
        AspectRatioBatchSampler(DefaultSampler(SizesDataset(LANDSCAPE)), 0)
