"""rcnn_det's ConcatDataset, RepeatDataset and ClassBalancedDataset pass each sample's
augmentation seed (``SampleIndex.seed``) on to the wrapped datasets, built by name from
configs as mmengine's are."""
from __future__ import annotations

import pytest
from mmengine.dataset import BaseDataset
from mmengine.registry import DefaultScope

from rcnn_det.datasets import ClassBalancedDataset, ConcatDataset, RepeatDataset
from rcnn_det.datasets.samplers.sampler import SampleIndex
from rcnn_det.registry import DATASETS


class RecordingDataset(BaseDataset):
    """Returns the index it was asked for, as it arrived."""
    METAINFO = dict(classes=('a', 'b'))

    def __init__(self, size: int, **kwargs) -> None:
        self.size = size
        super().__init__(lazy_init=False, serialize_data=False, **kwargs)

    def load_data_list(self) -> list[dict]:
        return [dict(img_id=i, instances=[dict(bbox_label=i % 2)]) for i in range(self.size)]

    def get_cat_ids(self, idx: int) -> list[int]:
        return [self.get_data_info(idx)['instances'][0]['bbox_label']]

    def __getitem__(self, idx):
        return idx


@pytest.mark.parametrize('wrap', [
    lambda: RepeatDataset(RecordingDataset(3), times=4),
    lambda: ClassBalancedDataset(RecordingDataset(5), oversample_thr=0.9),
    lambda: ConcatDataset([RecordingDataset(2), RecordingDataset(3)]),
])
def test_wrappers_pass_the_seed_on(wrap):
    dataset = wrap()
    for position in range(len(dataset)):
        got = dataset[SampleIndex(position, seed=1000 + position)]
        assert isinstance(got, SampleIndex) and got.seed == 1000 + position
        assert 0 <= int(got) < 5
    plain = dataset[1]                       # a plain index stays plain (mmengine's behaviour)
    assert type(plain) is int


def test_configs_build_the_seed_carrying_wrappers():
    cfg = dict(type='RepeatDataset', times=2, lazy_init=True,
               dataset=dict(type='CocoDataset', ann_file='x.json', lazy_init=True))
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        built = DATASETS.build(cfg)
    assert type(built) is RepeatDataset
