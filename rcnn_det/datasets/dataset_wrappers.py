"""mmengine's dataset wrappers (same names and arguments) that keep each sample's seed.

rcnn_det's samplers hand out ``SampleIndex`` ints that carry the seed of the sample's
augmentations (``samplers/sampler.py``); mmengine's wrappers turn an index into the wrapped
dataset's index with plain integer arithmetic, which drops the seed, so the augmentations of a
wrapped dataset came from the worker's generator and a resumed run differed. These pass the
seed on to the wrapped dataset.
"""
from __future__ import annotations

from mmengine.dataset import ClassBalancedDataset as MMEngineClassBalancedDataset
from mmengine.dataset import ConcatDataset as MMEngineConcatDataset
from mmengine.dataset import RepeatDataset as MMEngineRepeatDataset

from rcnn_det.registry import DATASETS

from .samplers.sampler import SampleIndex


class SeedCarryingWrapper:
    """Mixin: the wrapped dataset's index keeps the seed of the wrapper's ``SampleIndex``."""

    def _get_ori_dataset_idx(self, idx: int):
        ori = super()._get_ori_dataset_idx(idx)
        if not isinstance(idx, SampleIndex):
            return ori
        if isinstance(ori, tuple):   # ConcatDataset: (dataset index, sample index)
            return ori[0], SampleIndex(ori[1], idx.seed)
        return SampleIndex(ori, idx.seed)


@DATASETS.register_module()
class ConcatDataset(SeedCarryingWrapper, MMEngineConcatDataset):
    """mmengine's ConcatDataset, keeping each sample's augmentation seed."""


@DATASETS.register_module()
class RepeatDataset(SeedCarryingWrapper, MMEngineRepeatDataset):
    """mmengine's RepeatDataset, keeping each sample's augmentation seed."""


@DATASETS.register_module()
class ClassBalancedDataset(SeedCarryingWrapper, MMEngineClassBalancedDataset):
    """mmengine's ClassBalancedDataset, keeping each sample's augmentation seed."""
