"""VOCDataset on a tiny VOC2007 tree: loading, classes, difficult -> ignore_flag, mmdet's -1
shift, image size without <size>, filter_cfg, and errors that name the file."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from rcnn_det.datasets import VOCDataset
from rcnn_det.evaluation import VOCMetric
from rcnn_det.registry import DATASETS


def obj(name: str, box: tuple[int, int, int, int], difficult: int | None = 0) -> str:
    tag = '' if difficult is None else f'<difficult>{difficult}</difficult>'
    coords = ''.join(f'<{k}>{v}</{k}>' for k, v in zip(('xmin', 'ymin', 'xmax', 'ymax'), box))
    return f'<object><name>{name}</name>{tag}<bndbox>{coords}</bndbox></object>'


def write_voc(root, xmls: dict[str, str], image_set: list[str]) -> None:
    """data_root/VOC2007/{Annotations,JPEGImages,ImageSets/Main/test.txt}; 40 x 30 images."""
    voc = root / 'VOC2007'
    for sub in ('Annotations', 'JPEGImages', 'ImageSets/Main'):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for img_id, body in xmls.items():
        (voc / 'Annotations' / f'{img_id}.xml').write_text(f'<annotation>{body}</annotation>')
        cv2.imwrite(str(voc / 'JPEGImages' / f'{img_id}.jpg'), np.zeros((30, 40, 3), np.uint8))
    (voc / 'ImageSets/Main/test.txt').write_text('\n'.join(image_set) + '\n')


SIZE = '<size><width>500</width><height>375</height><depth>3</depth></size>'


@pytest.fixture
def voc_root(tmp_path):
    write_voc(tmp_path, {
        '000001': SIZE + obj('dog', (48, 240, 195, 371)) + obj('person', (8, 12, 352, 498), 1),
        '000002': obj('train', (139, 200, 207, 301), None) + obj('unicorn', (1, 1, 5, 5)),
        '000003': SIZE + obj('unicorn', (1, 1, 5, 5))}, ['000001', '000002', '000003'])
    return tmp_path


def build(root, **kwargs) -> VOCDataset:
    return DATASETS.build(dict(type='VOCDataset', data_root=str(root),
                               ann_file='VOC2007/ImageSets/Main/test.txt',
                               data_prefix=dict(sub_data_root='VOC2007/'), **kwargs))


def test_loads_images_instances_and_metainfo(voc_root):
    dataset = build(voc_root, test_mode=True)
    assert len(dataset) == 3
    assert dataset.metainfo['classes'][:3] == ('aeroplane', 'bicycle', 'bird')
    assert len(dataset.metainfo['classes']) == len(dataset.metainfo['palette']) == 20
    assert dataset.metainfo['dataset_type'] == 'VOC2007'
    first = dataset.get_data_info(0)
    assert first['img_id'] == '000001'
    assert first['img_path'] == str(voc_root / 'VOC2007' / 'JPEGImages' / '000001.jpg')
    assert (first['width'], first['height']) == (500, 375)
    dog, person = dataset.metainfo['classes'].index('dog'), 14
    # mmdet's XMLDataset: every corner - 1; difficult -> ignore_flag 1.
    assert first['instances'] == [
        dict(bbox=[47.0, 239.0, 194.0, 370.0], bbox_label=dog, ignore_flag=0),
        dict(bbox=[7.0, 11.0, 351.0, 497.0], bbox_label=person, ignore_flag=1)]
    assert dataset.get_cat_ids(0) == [dog, person]
    second = dataset.get_data_info(1)   # no <size>: read from the image; 'unicorn' skipped
    assert (second['width'], second['height']) == (40, 30)
    assert second['instances'] == [dict(bbox=[138.0, 199.0, 206.0, 300.0], bbox_label=18,
                                        ignore_flag=0)]
    assert dataset.get_data_info(2)['instances'] == []


def img_ids(dataset: VOCDataset) -> list[str]:
    return [dataset.get_data_info(i)['img_id'] for i in range(len(dataset))]


def test_custom_classes_and_filter_cfg(voc_root):
    # 000003 has no instance of the classes; 000002 is 40 x 30.
    assert img_ids(build(voc_root, filter_cfg=dict(filter_empty_gt=True, min_size=30))) == [
        '000001', '000002']
    assert img_ids(build(voc_root, filter_cfg=dict(min_size=31))) == ['000001', '000003']
    dataset = build(voc_root, filter_cfg=dict(filter_empty_gt=True),
                    metainfo=dict(classes=('person',)))
    # The difficult person still counts as an instance (mmdet's filter_data).
    assert img_ids(dataset) == ['000001']
    assert dataset.get_data_info(0)['instances'][0]['bbox_label'] == 0
    assert len(dataset.metainfo['palette']) == 1
    assert len(build(voc_root, test_mode=True, filter_cfg=dict(min_size=1000))) == 3
    with pytest.raises(ValueError, match='no images left'):
        build(voc_root, filter_cfg=dict(min_size=1000))


def test_errors_name_the_file(voc_root):
    (voc_root / 'VOC2007/ImageSets/Main/test.txt').write_text('000001\n000009\n')
    with pytest.raises(FileNotFoundError, match='000009.xml'):
        build(voc_root)
    (voc_root / 'VOC2007/Annotations/000009.xml').write_text('<annotation><object>')
    with pytest.raises(ValueError, match='000009.xml is not a valid VOC annotation xml'):
        build(voc_root)
    (voc_root / 'VOC2007/Annotations/000009.xml').write_text(
        f'<annotation>{SIZE}<object><name>dog</name><bndbox><xmin>a</xmin></bndbox>'
        '</object></annotation>')
    with pytest.raises(ValueError, match=r"000009.xml: <object> #0 \('dog'\).*xmin"):
        build(voc_root)
    with pytest.raises(ValueError, match='filter_cfg'):
        build(voc_root, filter_cfg=dict(filter_empty=True))


def test_pipeline_to_voc_metric(voc_root):
    # Packed ground truth (difficult -> ignored_instances) evaluated against itself: mAP 1.
    dataset = build(voc_root, test_mode=True, pipeline=[
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
        dict(type='PackDetInputs')])
    sample = dataset[0]['data_samples']
    assert sample.ignored_instances.bboxes.tolist() == [[7.0, 11.0, 351.0, 497.0]]
    sample.pred_instances = sample.gt_instances.clone()
    sample.pred_instances.scores = torch.ones(len(sample.gt_instances))
    metric = VOCMetric()
    metric.dataset_meta = dataset.metainfo
    metric.process({}, [sample.to_dict()])
    assert metric.evaluate(1) == {'pascal_voc/mAP': 1.0, 'pascal_voc/AP50': 1.0}


def test_the_voc0712_config_builds_its_training_set(tmp_path):
    """configs/_base_/datasets/voc0712.py: VOC2007 + VOC2012 trainval, concatenated (their
    metainfo differs in dataset_type only) and repeated 3 times."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from conftest import REPO_ROOT
    for year, ids in (('VOC2007', ['000001', '000002']), ('VOC2012', ['2008_000001'])):
        voc = tmp_path / year
        for sub in ('Annotations', 'JPEGImages', 'ImageSets/Main'):
            (voc / sub).mkdir(parents=True, exist_ok=True)
        for img_id in ids:
            (voc / 'Annotations' / f'{img_id}.xml').write_text(
                f'<annotation>{SIZE}{obj("dog", (48, 40, 195, 171))}</annotation>')
            cv2.imwrite(str(voc / 'JPEGImages' / f'{img_id}.jpg'),
                        np.zeros((375, 500, 3), np.uint8))
        (voc / 'ImageSets/Main/trainval.txt').write_text('\n'.join(ids) + '\n')
    cfg = Config.fromfile(str(REPO_ROOT / 'configs/pascal_voc/faster_rcnn_r50_fpn_1x_voc0712.py'))
    dataset_cfg = cfg.train_dataloader.dataset
    for part in dataset_cfg.dataset.datasets:
        part.data_root = f'{tmp_path}/'
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        dataset = DATASETS.build(dataset_cfg)
    assert len(dataset) == 3 * 3
    assert dataset[8]['data_samples'].metainfo['img_path'].endswith('2008_000001.jpg')
    assert cfg.model.roi_head.bbox_head.num_classes == len(dataset.metainfo['classes']) == 20
