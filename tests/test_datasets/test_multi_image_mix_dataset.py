"""MultiImageMixDataset (mmdetection 3.x's arguments): mixing transforms get other samples in
``mix_results``, ``skip_type_keys`` skips by type, None results are retried up to
``max_refetch`` times, and a ``SampleIndex`` seed fixes every draw, the wrapped dataset's
included."""
from __future__ import annotations

import numpy as np
import pytest
from mmengine.dataset import BaseDataset
from mmengine.registry import DefaultScope

from rcnn_det.datasets import MultiImageMixDataset
from rcnn_det.datasets.samplers.sampler import SampleIndex
from rcnn_det.datasets.transforms import CopyPaste, RandomFlip
from rcnn_det.registry import DATASETS

from .conftest import tiny_coco, write_coco


class NumberDataset(BaseDataset):
    """Sample i is dict(index=i, draw=<np.random draw in the dataset's own pipeline>);
    indices in ``none_at`` give None (as a pipeline that rejects the sample)."""
    METAINFO = dict(classes=('a', 'b'))

    def __init__(self, size: int = 6, none_at: tuple[int, ...] = (), **kwargs) -> None:
        self.size = size
        self.none_at = set(none_at)
        super().__init__(serialize_data=False, test_mode=True, **kwargs)

    def load_data_list(self) -> list[dict]:
        return [dict(index=i, width=10 + i, height=20) for i in range(self.size)]

    def __getitem__(self, idx):
        if int(idx) in self.none_at:
            return None
        return dict(index=int(idx), draw=float(np.random.random()))


class MixIn:
    """A mixing transform: takes the sample at ``index`` and records what it was given."""

    def __init__(self, index=3) -> None:
        self.index = index
        self.seen = []

    def get_indexes(self, dataset):
        return self.index() if callable(self.index) else self.index

    def __call__(self, results: dict) -> dict:
        self.seen.append(dict(results))
        results['mixed'] = [r['index'] for r in results['mix_results']]
        results['own_draw'] = float(np.random.random())
        return results


class Tag:
    """Appends its name to results['tags']."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, results: dict) -> dict:
        results['tags'] = results.get('tags', ()) + (self.name,)
        return results


class NoneTimes:
    """Returns None the first ``times`` calls, then the results."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.calls = []

    def __call__(self, results: dict) -> dict | None:
        self.calls.append(results)
        if len(self.calls) <= self.times:
            results['scribbled'] = True    # a new key on the try's copy, not on the sample
            return None
        return results


def test_mixing_transform_gets_mix_results_then_they_are_removed():
    mix = MixIn(index=4)
    dataset = MultiImageMixDataset(NumberDataset(), pipeline=[mix, Tag('after')])
    out = dataset[1]
    assert out['index'] == 1 and out['mixed'] == [4] and out['tags'] == ('after',)
    assert [r['index'] for r in mix.seen[0]['mix_results']] == [4]
    assert 'mix_results' not in out
    many = MultiImageMixDataset(NumberDataset(), pipeline=[MixIn(index=np.array([0, 5, 2]))])
    assert many[3]['mixed'] == [0, 5, 2]


def test_skip_type_keys_by_config_type_or_class_name():
    dataset = MultiImageMixDataset(NumberDataset(), pipeline=[Tag('a'), Tag('b')],
                                   skip_type_keys=['Tag'])
    assert 'tags' not in dataset[0]
    dataset.update_skip_type_keys([])
    assert dataset[0]['tags'] == ('a', 'b')
    dataset.update_skip_type_keys(None)
    assert dataset[0]['tags'] == ('a', 'b')
    with pytest.raises(TypeError, match='skip_type_keys'):
        dataset.update_skip_type_keys('Tag')
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        by_config = MultiImageMixDataset(NumberDataset(), skip_type_keys=('CopyPaste',),
                                         pipeline=[dict(type='CopyPaste')])
    assert by_config.pipeline_types == ['CopyPaste']
    assert type(by_config.pipeline[0]) is CopyPaste
    assert set(by_config[2]) == {'index', 'draw'}    # skipped: nothing mixed in


def test_none_from_a_transform_is_retried_on_the_same_input():
    flaky = NoneTimes(times=3)
    out = MultiImageMixDataset(NumberDataset(), pipeline=[Tag('x'), flaky], max_refetch=4)[2]
    assert out['index'] == 2 and len(flaky.calls) == 4 and 'scribbled' not in out
    assert all(call['tags'] == ('x',) for call in flaky.calls)
    always = NoneTimes(times=100)
    dataset = MultiImageMixDataset(NumberDataset(), pipeline=[always], max_refetch=5)
    with pytest.raises(RuntimeError, match='NoneTimes returned None 5 times'):
        dataset[0]
    assert len(always.calls) == 5


def test_mixed_in_samples_that_are_none_are_redrawn():
    draws = iter([1, 3, 1, 5])                       # 1 and 3 give None
    dataset = MultiImageMixDataset(NumberDataset(none_at=(1, 3)),
                                   pipeline=[MixIn(index=lambda: next(draws))], max_refetch=4)
    assert dataset[0]['mixed'] == [5]
    stuck = MultiImageMixDataset(NumberDataset(none_at=(1,)), pipeline=[MixIn(index=1)],
                                 max_refetch=3)
    with pytest.raises(RuntimeError, match='returned None'):
        stuck[0]


def test_a_sample_seed_fixes_every_draw_and_leaves_the_global_generator():
    def build():
        return MultiImageMixDataset(
            NumberDataset(), pipeline=[MixIn(index=lambda: np.random.randint(0, 6))])

    np.random.seed(0)
    first = build()[SampleIndex(2, seed=77)]
    state = np.random.get_state()[1].copy()
    np.random.seed(123)       # another global state: the seeded sample does not change
    again = build()[SampleIndex(2, seed=77)]
    assert first == again
    np.random.seed(0)
    build()[SampleIndex(2, seed=77)]
    np.testing.assert_array_equal(np.random.get_state()[1], state)   # put back afterwards
    outcomes = set()
    for seed in range(6):
        out = build()[SampleIndex(2, seed=seed)]
        outcomes.add((out['mixed'][0], out['draw'], out['own_draw']))
    assert len(outcomes) == 6
    np.random.seed(5)
    plain = build()[2]
    assert isinstance(plain['draw'], float)   # a plain index uses the global generator


def test_dataset_interface():
    dataset = MultiImageMixDataset(NumberDataset(size=4), pipeline=[], lazy_init=True)
    assert not dataset._fully_initialized
    assert len(dataset) == 4 and dataset._fully_initialized
    assert dataset.get_data_info(SampleIndex(2, seed=1))['width'] == 12
    meta = dataset.metainfo
    meta['classes'] = ()
    assert dataset.metainfo['classes'] == ('a', 'b')    # a copy


@pytest.mark.parametrize('pipeline, error', [
    (dict(type='CopyPaste'), TypeError),
    ([42], TypeError),
])
def test_bad_pipelines_are_rejected(pipeline, error):
    with pytest.raises(error, match='pipeline'):
        MultiImageMixDataset(NumberDataset(), pipeline=pipeline)


def test_config_builds_the_wrapper_and_the_coco_dataset_in_rcnn_det_scope(tmp_path):
    write_coco(tmp_path, tiny_coco())
    cfg = dict(type='MultiImageMixDataset',
               dataset=dict(type='CocoDataset', data_root=str(tmp_path), ann_file='ann.json',
                            data_prefix=dict(img='imgs/'),
                            pipeline=[dict(type='LoadImageFromFile'),
                                      dict(type='LoadAnnotations', with_mask=True)]),
               pipeline=[dict(type='RandomFlip', prob=1.0), dict(type='PackDetInputs')],
               max_refetch=3)
    built = DATASETS.build(cfg)       # no default scope: the wrapper sets rcnn_det's
    assert type(built) is MultiImageMixDataset and type(built.pipeline[0]) is RandomFlip
    assert built.max_refetch == 3 and len(built) == 4
    sample = built[0]['data_samples']
    assert sample.flip and sample.gt_instances.masks.shape[1:] == (30, 40)
