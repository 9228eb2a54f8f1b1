"""docs/custom_dataset.md's recipe end to end: a COCO-format dataset with classes of its own
(new names, other category ids, one category of the json left out), trained, tested and
predicted on through the tools."""
from __future__ import annotations

import json
import re
import shutil

from conftest import DEMO_CONFIG, PYTHON, REPO_ROOT, run_tool

NAMES = {1: 'washer', 2: 'bolt', 3: 'gear', 4: 'nut'}      # the shapes' categories renamed
CLASSES = ('bolt', 'nut', 'washer')                          # 'gear' left out, another order


def write_parts_dataset(root, shapes_root) -> None:
    """The tiny shapes data in the guide's layout, categories renamed, ids offset by 10."""
    for split in ('train', 'val'):
        data = json.loads((shapes_root / 'annotations' / f'instances_{split}.json').read_text())
        data['categories'] = [dict(id=c['id'] + 10, name=NAMES[c['id']])
                              for c in data['categories']]
        for ann in data['annotations']:
            ann['category_id'] += 10
        (root / 'annotations').mkdir(parents=True, exist_ok=True)
        (root / 'annotations' / f'{split}.json').write_text(json.dumps(data))
        shutil.copytree(shapes_root / split, root / 'images' / split)


def test_the_guide_trains_tests_and_predicts_with_new_classes(tmp_path, tiny_shapes_root):
    root = tmp_path / 'parts'
    write_parts_dataset(root, tiny_shapes_root)
    config = tmp_path / 'my_parts.py'
    config.write_text(f"""
_base_ = [{str(DEMO_CONFIG)!r}]
data_root = {str(root) + '/'!r}
classes = {CLASSES!r}
metainfo = dict(classes=classes)
model = dict(roi_head=dict(bbox_head=dict(num_classes=len(classes))))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(
    _delete_=True, type='CocoDataset', data_root=data_root, metainfo=metainfo,
    ann_file='annotations/train.json', data_prefix=dict(img='images/train/'),
    filter_cfg=dict(filter_empty_gt=True, min_size=8),
    pipeline={{{{_base_.train_pipeline}}}}))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(
    _delete_=True, type='CocoDataset', data_root=data_root, metainfo=metainfo,
    ann_file='annotations/val.json', data_prefix=dict(img='images/val/'), test_mode=True,
    pipeline={{{{_base_.test_pipeline}}}}))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json', classwise=True)
test_evaluator = val_evaluator
train_cfg = dict(max_iters=2, val_interval=2)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]
default_hooks = dict(checkpoint=dict(interval=2, max_keep_ckpts=-1))
""")
    work = tmp_path / 'work'
    log = run_tool([PYTHON, str(REPO_ROOT / 'tools/train.py'), str(config), '--work-dir',
                    str(work)], cwd=tmp_path).stdout
    for name in CLASSES:                      # the classwise table names the classes
        assert re.search(rf'coco/{name}_precision: ', log), log[-2000:]
    assert 'coco/gear_precision' not in log
    log = run_tool([PYTHON, str(REPO_ROOT / 'tools/test.py'), str(config),
                    str(work / 'iter_2.pth'), '--work-dir', str(work)], cwd=tmp_path).stdout
    assert re.search(r'coco/bolt_precision: ', log)
    run_tool([PYTHON, str(REPO_ROOT / 'tools/infer.py'), str(config), str(work / 'iter_2.pth'),
              str(root / 'images' / 'val'), '--out-dir', 'out', '--score-thr', '0'],
             cwd=tmp_path)
    predictions = json.loads((tmp_path / 'out' / 'predictions.json').read_text())
    names = {i['class_name'] for p in predictions for i in p['instances']}
    assert names and names <= set(CLASSES)    # labels named by the checkpoint's classes
