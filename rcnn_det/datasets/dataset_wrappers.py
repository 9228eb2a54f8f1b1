"""mmengine's dataset wrappers (same names and arguments) that keep each sample's seed.

rcnn_det's samplers hand out ``SampleIndex`` ints that carry the seed of the sample's
augmentations (``samplers/sampler.py``); mmengine's wrappers turn an index into the wrapped
dataset's index with plain integer arithmetic, which drops the seed, so the augmentations of a
wrapped dataset came from the worker's generator and a resumed run differed. These pass the
seed on to the wrapped dataset.

``MultiImageMixDataset`` is mmdetection 3.x's (mmengine has none): a second pipeline that may mix
several images of the wrapped dataset (``CopyPaste``); it runs under the sample's seed too.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
from mmengine.dataset import BaseDataset
from mmengine.dataset import ClassBalancedDataset as MMEngineClassBalancedDataset
from mmengine.dataset import ConcatDataset as MMEngineConcatDataset
from mmengine.dataset import RepeatDataset as MMEngineRepeatDataset
from mmengine.registry import DefaultScope

from rcnn_det.registry import DATASETS, TRANSFORMS

from .samplers.sampler import SampleIndex, seeded_rng


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


@DATASETS.register_module()
class MultiImageMixDataset:
    """mmdetection 3.x's ``MultiImageMixDataset``: the wrapped dataset's samples go through a
    second ``pipeline`` whose transforms may mix in other samples of the same dataset.

    For each transform of ``pipeline`` (in order; those whose config ``type`` is in
    ``skip_type_keys`` are skipped):
    1. if it has ``get_indexes(dataset)`` (``CopyPaste``), the samples at those indices are
       fetched from the wrapped dataset (its own pipeline applied) into
       ``results['mix_results']``; a fetch that gives None is redrawn, at most ``max_refetch``
       times, as in mmdet;
    2. the transform runs; if it returns None it runs again on the same input, at most
       ``max_refetch`` times (mmdet's), then RuntimeError. The retry input is a shallow copy of
       the results dict (mmdet deep-copies the whole sample, masks included, before every try),
       so a transform that returns None must not have changed the arrays it was given in place;
       rcnn_det's transforms do not;
    3. ``mix_results`` is removed.

    An index from rcnn_det's samplers (``SampleIndex``) runs all of it, the wrapped dataset's
    pipelines included, under its seed (``seeded_rng``), as ``CocoDataset`` does: the mixed-in
    images and every random draw depend only on the sample's position in the stream.

    Args:
        dataset: the wrapped dataset or its config (built in rcnn_det's scope when none is set).
        pipeline: transform configs (or built transforms: then their class name is their type).
        skip_type_keys: transform types to skip (``update_skip_type_keys`` changes them, e.g.
            from a hook that turns mixing off for the last epochs).
        max_refetch: tries per transform, see above.
        lazy_init: defer the wrapped dataset's ``full_init``.
    """

    def __init__(self, dataset: BaseDataset | dict, pipeline: Sequence[dict | Callable],
                 skip_type_keys: Sequence[str] | None = None, max_refetch: int = 15,
                 lazy_init: bool = False) -> None:
        if isinstance(pipeline, (str, dict)) or not isinstance(pipeline, Sequence):
            raise TypeError(f'MultiImageMixDataset: pipeline must be a list of transform '
                            f'configs, got {type(pipeline).__name__}')
        if max_refetch < 1:
            raise ValueError(f'MultiImageMixDataset: max_refetch must be >= 1, got {max_refetch}')
        # As CocoDataset: mmengine's root registry would otherwise resolve mmcv's transforms.
        scope = None if DefaultScope.get_current_instance() is not None else 'rcnn_det'
        with DefaultScope.overwrite_default_scope(scope):
            self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
            self.pipeline, self.pipeline_types = [], []
            for i, transform in enumerate(pipeline):
                if isinstance(transform, dict):
                    self.pipeline_types.append(transform['type'])
                    transform = TRANSFORMS.build(transform)
                elif callable(transform):
                    self.pipeline_types.append(type(transform).__name__)
                else:
                    raise TypeError(f'MultiImageMixDataset: pipeline[{i}] must be a transform '
                                    f'config dict or a callable, got {type(transform).__name__}')
                self.pipeline.append(transform)
        self.update_skip_type_keys(skip_type_keys)
        self.max_refetch = max_refetch
        self._metainfo = self.dataset.metainfo
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    @property
    def metainfo(self) -> dict:
        """The wrapped dataset's metainfo (a copy)."""
        return copy.deepcopy(self._metainfo)

    def full_init(self) -> None:
        if self._fully_initialized:
            return
        self.dataset.full_init()
        self.num_samples = len(self.dataset)
        self._fully_initialized = True

    def get_data_info(self, idx: int) -> dict:
        """The wrapped dataset's data info of ``idx`` (image size for batch samplers)."""
        self.full_init()
        return self.dataset.get_data_info(int(idx))

    def __len__(self) -> int:
        self.full_init()
        return self.num_samples

    def update_skip_type_keys(self, skip_type_keys: Sequence[str] | None) -> None:
        if skip_type_keys is not None and (
                isinstance(skip_type_keys, str)
                or not all(isinstance(k, str) for k in skip_type_keys)):
            raise TypeError(f'MultiImageMixDataset: skip_type_keys must be a list of transform '
                            f'type names, got {skip_type_keys!r}')
        self._skip_type_keys = None if skip_type_keys is None else tuple(skip_type_keys)

    def __getitem__(self, idx: int) -> dict:
        self.full_init()
        seed = getattr(idx, 'seed', None)
        if seed is None:
            return self._mix(int(idx))
        with seeded_rng(seed):
            return self._mix(int(idx))

    def _mix(self, idx: int) -> dict:
        results = self.dataset[idx]
        for transform, type_name in zip(self.pipeline, self.pipeline_types):
            if self._skip_type_keys is not None and type_name in self._skip_type_keys:
                continue
            if hasattr(transform, 'get_indexes'):
                results['mix_results'] = self._fetch_mix_results(transform, type_name)
            for _ in range(self.max_refetch):
                updated = transform(dict(results))
                if updated is not None:
                    break
            else:
                raise RuntimeError(f'MultiImageMixDataset: {type_name} returned None '
                                   f'{self.max_refetch} times for sample {idx} (img_path='
                                   f"{results.get('img_path')}); check the wrapper's pipeline")
            results = updated
            results.pop('mix_results', None)
        return results

    def _fetch_mix_results(self, transform: Callable, type_name: str) -> list[dict]:
        for _ in range(self.max_refetch):
            indexes = transform.get_indexes(self.dataset)
            indexes = [indexes] if np.ndim(indexes) == 0 else list(indexes)
            mix_results = [self.dataset[int(i)] for i in indexes]
            if all(r is not None for r in mix_results):
                return mix_results
        raise RuntimeError(f'MultiImageMixDataset: the wrapped dataset returned None for the '
                           f'images {type_name} mixes in, {self.max_refetch} times; check its '
                           'pipeline')
