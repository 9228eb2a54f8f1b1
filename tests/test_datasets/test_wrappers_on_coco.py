"""The dataset wrappers of mmdetection's configs (RepeatDataset, ClassBalancedDataset,
ConcatDataset) over rcnn_det's COCO datasets: their lengths and class frequencies, and a
training run through tools/train.py with them."""
from __future__ import annotations

import copy
import math
from collections import Counter

from mmengine.config import Config
from mmengine.registry import DefaultScope

from conftest import DEMO_CONFIG, PYTHON, REPO_ROOT, TINY_SHAPES, run_tool, write_tiny_demo_config
from rcnn_det.registry import DATASETS


def shapes_dataset_cfg(root) -> dict:
    cfg = copy.deepcopy(Config.fromfile(str(DEMO_CONFIG)).train_dataloader.dataset)
    cfg.update(data_root=f'{root}/', shapes_cfg=TINY_SHAPES)
    return cfg


def build(cfg: dict):
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        return DATASETS.build(cfg)


def test_lengths_and_class_frequencies(tiny_shapes_root):
    base_cfg = shapes_dataset_cfg(tiny_shapes_root)
    base = build(base_cfg)
    assert len(build(dict(type='RepeatDataset', times=3, dataset=base_cfg))) == 3 * len(base)
    concat = build(dict(type='ConcatDataset', datasets=[base_cfg, base_cfg]))
    assert len(concat) == 2 * len(base)
    assert concat.get_data_info(len(base))['img_path'] == base.get_data_info(0)['img_path']

    threshold = 0.5
    balanced = build(dict(type='ClassBalancedDataset', oversample_thr=threshold,
                          dataset=base_cfg))
    # LVIS's repeat factor sampling, by hand: r(c) = max(1, sqrt(t / f(c))), f(c) the share of
    # images with class c; each image repeated ceil(max r over its classes) times
    classes = [set(base.get_cat_ids(i)) for i in range(len(base))]
    share = {c: sum(c in s for s in classes) / len(base) for c in set().union(*classes)}
    repeats = [math.ceil(max(max(1.0, math.sqrt(threshold / share[c])) for c in s))
               for s in classes]
    assert len(balanced) == sum(repeats) > len(base)
    images = Counter(balanced.get_data_info(i)['img_path'] for i in range(len(balanced)))
    assert [images[base.get_data_info(i)['img_path']] for i in range(len(base))] == repeats
    rarest = min(share, key=share.get)
    shown = sum(rarest in set(balanced.get_cat_ids(i)) for i in range(len(balanced)))
    assert shown / len(balanced) > share[rarest]      # the rare class is seen more often


def test_training_on_wrapped_datasets(tmp_path, tiny_shapes_root):
    base = shapes_dataset_cfg(tiny_shapes_root)
    wrapped = dict(type='ConcatDataset', datasets=[
        dict(type='ClassBalancedDataset', oversample_thr=0.5, dataset=base),
        dict(type='RepeatDataset', times=2, dataset=base)])
    cfg = write_tiny_demo_config(tmp_path / 'wrapped.py', tiny_shapes_root,
                                 extra='train_dataloader = dict(batch_size=2, num_workers=0, '
                                       'persistent_workers=False, dataset=dict(_delete_=True, '
                                       f'**{wrapped!r}))')
    log = run_tool([PYTHON, str(REPO_ROOT / 'tools/train.py'), str(cfg), '--work-dir',
                    str(tmp_path / 'work')], cwd=tmp_path).stdout
    assert 'Iter(train) [2/2]' in log
    assert (tmp_path / 'work' / 'iter_2.pth').is_file()
