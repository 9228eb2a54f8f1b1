"""CocoDataset: class selection, box conversion, crowd flags, filtering and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from rcnn_det.datasets import CocoDataset
from rcnn_det.datasets.transforms import LoadImageFromFile, Resize
from rcnn_det.registry import DATASETS

from .conftest import tiny_coco, write_coco


def build(root: Path, **kwargs) -> CocoDataset:
    return CocoDataset(ann_file='ann.json', data_root=str(root), data_prefix=dict(img='imgs/'),
                       **kwargs)


def test_classes_from_json_sorted_by_id(coco_root):
    ds = build(coco_root)
    assert ds.metainfo['classes'] == ('dog', 'cat', 'bird')
    assert ds.cat_ids == [1, 3, 7]
    assert ds.cat2label == {1: 0, 3: 1, 7: 2}
    palette = ds.metainfo['palette']
    assert len(palette) == 3 and len(set(palette)) == 3
    assert build(coco_root).metainfo['palette'] == palette  # deterministic


def test_data_info_fields(coco_root):
    ds = build(coco_root, serialize_data=False)
    info = ds.get_data_info(0)
    assert info['img_id'] == 1
    assert info['img_path'] == str(coco_root / 'imgs' / 'a.png')
    assert (info['height'], info['width']) == (30, 40)
    dog, cat = info['instances']
    assert dog == dict(bbox=[2.0, 3.0, 12.0, 8.0], bbox_label=0, ignore_flag=0,
                       mask=[[2, 3, 12, 3, 12, 8, 2, 8]])
    assert cat['bbox'] == [20.0, 10.0, 28.0, 18.0] and cat['bbox_label'] == 1
    assert cat['ignore_flag'] == 1 and isinstance(cat['mask'], dict)
    assert ds.get_cat_ids(0) == [0, 1]


def test_metainfo_classes_select_and_order_by_name(coco_root):
    ds = build(coco_root, metainfo=dict(classes=('bird', 'dog')))
    assert ds.metainfo['classes'] == ('bird', 'dog')
    assert ds.cat_ids == [7, 1]
    assert [i['bbox_label'] for i in ds.get_data_info(0)['instances']] == [1]  # cat dropped
    assert [i['bbox_label'] for i in ds.get_data_info(1)['instances']] == [0]


def test_metainfo_unknown_class_is_an_error(coco_root):
    with pytest.raises(ValueError, match=r"horse.*ann\.json"):
        build(coco_root, metainfo=dict(classes=('dog', 'horse')))


def kept_ids(ds: CocoDataset) -> list:
    return [ds.get_data_info(i)['img_id'] for i in range(len(ds))]


def test_filter_empty_gt_and_min_size(coco_root):
    assert len(build(coco_root)) == 4  # no filter_cfg: mmdet keeps everything
    kept = build(coco_root, filter_cfg=dict(filter_empty_gt=True, min_size=0))
    # image 3 has no annotation; image 4 only a crowd region, which counts (mmdet's cat_img_map)
    assert kept_ids(kept) == [1, 2, 4]
    kept = build(coco_root, filter_cfg=dict(filter_empty_gt=True, min_size=25))
    assert kept_ids(kept) == [1, 4]
    kept = build(coco_root, filter_cfg=dict(filter_empty_gt=False, min_size=25))
    assert [kept.get_data_info(i)['img_id'] for i in range(len(kept))] == [1, 3, 4]


def only_crowd_and_unusable_boxes(coco: dict) -> None:
    """Image 2's bird becomes a crowd region; image 3 gets only annotations that parsing drops
    (zero width, height below 1 px, zero area, outside the image, NaN, mmdet's 'ignore');
    a fifth image has only an annotation of the cat, the class left out below."""
    coco['annotations'][2]['iscrowd'] = 1
    unusable = [dict(bbox=[5, 5, 0, 10]), dict(bbox=[5, 5, 10, 0.5]), dict(area=0),
                dict(bbox=[100, 100, 5, 5]), dict(bbox=[float('nan'), 5, 5, 5]),
                dict(ignore=True)]
    for i, change in enumerate(unusable):
        coco['annotations'].append({**dict(id=20 + i, image_id=3, category_id=1, area=25,
                                           bbox=[5, 5, 5, 5], iscrowd=0), **change})
    coco['images'].append(dict(id=5, file_name='e.png', width=60, height=60))
    coco['annotations'].append(dict(id=30, image_id=5, category_id=3, area=25, bbox=[5, 5, 5, 5],
                                    iscrowd=0))


def mmdet_kept_ids(coco: dict, cat_ids: list[int]) -> list[int]:
    """Reference, mmdet's filter_empty_gt: the images with any annotation of ``cat_ids``."""
    annotated = {ann['image_id'] for ann in coco['annotations']
                 if ann['category_id'] in cat_ids}
    return [img['id'] for img in coco['images'] if img['id'] in annotated]


def test_filter_empty_gt_keeps_images_with_only_crowd_or_unusable_annotations(tmp_path):
    coco = edited(only_crowd_and_unusable_boxes)
    write_coco(tmp_path, coco)
    ds = build(tmp_path, metainfo=dict(classes=('dog', 'bird')),
               filter_cfg=dict(filter_empty_gt=True, min_size=0))
    assert kept_ids(ds) == [1, 2, 3] == mmdet_kept_ids(coco, cat_ids=[1, 7])
    # Image 1 has a dog; image 2 only its crowd bird; image 3 only dropped dog annotations.
    # Images 4 and 5 hold cats only, which are not among the classes: dropped.
    assert [inst['ignore_flag'] for inst in ds.get_data_info(1)['instances']] == [1]
    assert ds.get_data_info(2)['instances'] == []
    every_class = build(tmp_path, filter_cfg=dict(filter_empty_gt=True, min_size=0))
    assert kept_ids(every_class) == [1, 2, 3, 4, 5] == mmdet_kept_ids(coco, cat_ids=[1, 3, 7])


def test_cat_img_map_is_pycocotools_cat_to_imgs(tmp_path):
    coco = edited(only_crowd_and_unusable_boxes)
    write_coco(tmp_path, coco)
    ds = build(tmp_path)
    assert ds.cat_img_map == {1: [1, 3, 3, 3, 3, 3, 3], 3: [1, 4, 5], 7: [2]}
    assert ds.cat_img_map == dict(COCO(str(tmp_path / 'ann.json')).catToImgs)


def test_filter_empty_gt_warns_about_skipped_boxes_of_kept_images(tmp_path, monkeypatch):
    coco = edited(only_crowd_and_unusable_boxes)
    write_coco(tmp_path, coco)
    logged = []
    monkeypatch.setattr('rcnn_det.datasets.coco.print_log',
                        lambda msg, logger=None, level=None: logged.append((msg, level)))
    ds = build(tmp_path, filter_cfg=dict(filter_empty_gt=True, min_size=0))
    assert len(ds) == 5 and len(logged) == 1
    msg, level = logged[0]
    assert level == 30 and 'skipped 5 annotation(s)' in msg  # the 'ignore' one is not a skip
    assert "annotation 24 (image 3 'c.png'): bbox [nan, 5, 5, 5] has a non-finite" in msg


def test_image_kept_for_a_crowd_region_goes_through_the_pipeline(coco_root):
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_mask=True),
                dict(type='PackDetInputs')]
    ds = build(coco_root, pipeline=pipeline, filter_cfg=dict(filter_empty_gt=True, min_size=0))
    assert kept_ids(ds) == [1, 2, 4]
    packed = ds[2]  # image 4: one crowd cat, no training box
    sample = packed['data_samples']
    assert sample.img_id == 4 and len(sample.gt_instances) == 0
    assert len(sample.ignored_instances) == 1
    assert sample.gt_instances.bboxes.shape == (0, 4)


def test_test_mode_keeps_empty_images(coco_root):
    ds = build(coco_root, test_mode=True, filter_cfg=dict(filter_empty_gt=True, min_size=25))
    assert len(ds) == 4
    assert ds.get_data_info(2)['instances'] == []


def test_unknown_filter_key(coco_root):
    with pytest.raises(ValueError, match='filter_empty'):
        build(coco_root, filter_cfg=dict(filter_empty=True))


def test_built_from_registry_with_lazy_init(coco_root):
    ds = DATASETS.build(dict(type='CocoDataset', ann_file='ann.json', data_root=str(coco_root),
                             data_prefix=dict(img='imgs/'), lazy_init=True))
    assert 'classes' not in ds.metainfo
    ds.full_init()
    assert len(ds) == 4 and ds.metainfo['classes'] == ('dog', 'cat', 'bird')


@pytest.mark.parametrize('text, expected', [
    ('not json at all', 'invalid JSON'),
    ('[1, 2]', 'top level is a list'),
    (json.dumps(dict(images=[], annotations=[])), r"missing top-level key\(s\) \['categories'\]"),
    (json.dumps(dict(categories=[])), r"\['images', 'annotations'\]"),
])
def test_not_a_coco_file(tmp_path, text, expected):
    write_coco(tmp_path, text)
    with pytest.raises(ValueError, match=expected) as err:
        build(tmp_path)
    assert str(tmp_path / 'ann.json') in str(err.value)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothere.json'):
        CocoDataset(ann_file=str(tmp_path / 'nothere.json'))


def edited(change) -> dict:
    coco = tiny_coco()
    change(coco)
    return coco


@pytest.mark.parametrize('change, expected', [
    (lambda c: c['annotations'][2].update(image_id=99),
     r'annotation 3 refers to image_id 99'),
    (lambda c: c['annotations'][0].update(category_id=5),
     r'annotation 1 refers to category_id 5'),
    (lambda c: c['annotations'][1].pop('bbox'), r"annotation 2 .*lacks key\(s\) \['bbox'\]"),
    (lambda c: c['images'][1].pop('height'), r"image 2 .*lacks key\(s\) \['height'\]"),
    (lambda c: c['annotations'][3].update(id=1), r'duplicate annotation id\(s\) \[1\]'),
    (lambda c: c['annotations'][0].update(bbox=[1, 2, 3]), r'annotation 1 has bbox \[1, 2, 3\]'),
    (lambda c: c['annotations'][0].update(bbox=['1', 2, 3, 4]),
     r"annotation 1 has bbox \['1', 2, 3, 4\], expected \[x, y, width, height\] numbers"),
    (lambda c: c['annotations'][1].update(bbox=None), r'annotation 2 has bbox None'),
    (lambda c: c['annotations'][2].update(bbox=[1, 1, True, 5]), r'annotation 3 has bbox'),
    (lambda c: c['annotations'][3].update(area='big'),
     r"annotation 4 has area 'big', expected a number"),
])
def test_bad_references_name_the_culprit(tmp_path, change, expected):
    write_coco(tmp_path, edited(change), with_images=False)
    with pytest.raises(ValueError, match=expected) as err:
        build(tmp_path)
    assert 'ann.json' in str(err.value)


def test_degenerate_boxes_are_skipped_with_one_warning(tmp_path, monkeypatch):
    def change(coco):
        coco['annotations'][0]['bbox'] = [2, 3, 0, 5]        # zero width
        coco['annotations'][2]['area'] = 0                   # zero area
        coco['annotations'].append(dict(id=9, image_id=3, category_id=1, area=4,
                                        bbox=[100, 100, 2, 2], iscrowd=0))  # outside
    write_coco(tmp_path, edited(change))
    logged = []
    monkeypatch.setattr('rcnn_det.datasets.coco.print_log',
                        lambda msg, logger=None, level=None: logged.append((msg, level)))
    ds = build(tmp_path)
    assert len(logged) == 1
    msg, level = logged[0]
    assert level == 30  # logging.WARNING
    assert "annotation 1 (image 1 'a.png')" in msg and 'width/height 0x5' in msg
    assert "annotation 3 (image 2 'b.png')" in msg and 'area 0' in msg
    assert "annotation 9 (image 3 'c.png')" in msg and 'outside' in msg
    assert len(ds.get_data_info(0)['instances']) == 1  # only the crowd cat remains
    assert ds.get_data_info(1)['instances'] == []


def test_non_finite_boxes_are_skipped_and_named(tmp_path, monkeypatch):
    nan, inf = float('nan'), float('inf')

    def change(coco):
        coco['annotations'][0]['bbox'] = [nan, 3, 10, 5]
        coco['annotations'][2]['bbox'] = [1, 1, inf, 5]
        coco['annotations'] += [
            dict(id=9, image_id=3, category_id=1, area=4, bbox=[1, 1, 5, -inf], iscrowd=0),
            dict(id=10, image_id=3, category_id=1, area=nan, bbox=[1, 1, 5, 5], iscrowd=0),
            dict(id=11, image_id=3, category_id=1, area=25, bbox=[1, 1, 5, 5], iscrowd=0)]
    ann_file = write_coco(tmp_path, edited(change))
    text = ann_file.read_text()
    assert 'NaN' in text and '-Infinity' in text  # the json tokens Python's json module reads
    logged = []
    monkeypatch.setattr('rcnn_det.datasets.coco.print_log',
                        lambda msg, logger=None, level=None: logged.append(msg))
    ds = build(tmp_path, serialize_data=False)
    assert len(logged) == 1 and 'skipped 4 annotation(s)' in logged[0]
    msg = logged[0]
    assert "annotation 1 (image 1 'a.png'): bbox [nan, 3, 10, 5] has a non-finite" in msg
    assert "annotation 3 (image 2 'b.png'): bbox [1, 1, inf, 5] has a non-finite" in msg
    assert "annotation 9 (image 3 'c.png'): bbox [1, 1, 5, -inf] has a non-finite" in msg
    assert "annotation 10 (image 3 'c.png'): area nan is not a number" in msg
    assert [inst['ignore_flag'] for inst in ds.get_data_info(0)['instances']] == [1]
    assert ds.get_data_info(1)['instances'] == []
    assert ds.get_data_info(2)['instances'] == [dict(bbox=[1.0, 1.0, 6.0, 6.0], bbox_label=0,
                                                     ignore_flag=0)]


def test_many_skips_are_aggregated(tmp_path, monkeypatch):
    coco = tiny_coco()
    coco['annotations'] += [dict(id=100 + i, image_id=3, category_id=1, area=0,
                                 bbox=[1, 1, 0, 0], iscrowd=0) for i in range(25)]
    write_coco(tmp_path, coco)
    logged = []
    monkeypatch.setattr('rcnn_det.datasets.coco.print_log',
                        lambda msg, logger=None, level=None: logged.append(msg))
    build(tmp_path)
    assert len(logged) == 1 and 'skipped 25 annotation(s)' in logged[0]
    assert '... and 15 more' in logged[0] and logged[0].count('\n') == 11


@pytest.mark.parametrize('metainfo, filter_cfg, counts', [
    (None, dict(filter_empty_gt=True, min_size=100000),
     '4 removed by filter_cfg min_size=100000 (shorter side below it), '
     '0 by filter_empty_gt (no annotation of the classes)'),
    # image 2 (50x20) is too small; 1 and 4 have no bird (only a dog and cats), 3 nothing
    (dict(classes=('bird',)), dict(filter_empty_gt=True, min_size=25),
     '1 removed by filter_cfg min_size=25 (shorter side below it), '
     '3 by filter_empty_gt (no annotation of the classes)'),
    (None, dict(filter_empty_gt=False, min_size=61),
     '4 removed by filter_cfg min_size=61 (shorter side below it), 0 by filter_empty_gt (off)'),
])
def test_everything_filtered_names_file_and_counts(coco_root, metainfo, filter_cfg, counts):
    with pytest.raises(ValueError) as err:
        build(coco_root, metainfo=metainfo, filter_cfg=filter_cfg)
    assert str(err.value) == (f"{coco_root / 'ann.json'}: no images left for training: "
                              f'4 images in the file, {counts}')


def test_filter_cfg_does_not_empty_a_test_set(coco_root):
    ds = build(coco_root, test_mode=True, filter_cfg=dict(filter_empty_gt=True, min_size=10**5))
    assert len(ds) == 4


@pytest.mark.parametrize('test_mode', [False, True])
def test_file_without_images_is_an_error(tmp_path, test_mode):
    write_coco(tmp_path, dict(images=[], annotations=[], categories=tiny_coco()['categories']))
    with pytest.raises(ValueError) as err:
        build(tmp_path, test_mode=test_mode)
    assert str(err.value) == f"{tmp_path / 'ann.json'}: the annotation file has no images"


def test_file_without_images_fails_at_full_init_when_lazy(tmp_path):
    write_coco(tmp_path, dict(images=[], annotations=[], categories=tiny_coco()['categories']))
    ds = build(tmp_path, lazy_init=True)
    with pytest.raises(ValueError, match='the annotation file has no images'):
        ds.full_init()


def test_missing_image_names_the_path(coco_root):
    (coco_root / 'imgs' / 'b.png').unlink()
    ds = build(coco_root, pipeline=[dict(type='LoadImageFromFile')], test_mode=True)
    assert ds[0]['img'].shape == (30, 40, 3)
    with pytest.raises(FileNotFoundError) as err:
        ds[1]
    assert str(coco_root / 'imgs' / 'b.png') in str(err.value)
    assert 'img_id=2' in str(err.value) and 'dataset index=1' in str(err.value)


def test_unreadable_image_names_the_path(coco_root):
    (coco_root / 'imgs' / 'a.png').write_bytes(b'this is no png')
    ds = build(coco_root, pipeline=[LoadImageFromFile()], test_mode=True)
    with pytest.raises(OSError, match='cannot decode image file .*a.png'):
        ds[0]


def test_pipeline_without_default_scope_uses_our_transforms(coco_root):
    ds = build(coco_root, pipeline=[dict(type='LoadImageFromFile'),
                                    dict(type='RandomChoiceResize', scales=[(20, 20)])])
    load, choice = ds.pipeline.transforms
    assert type(load) is LoadImageFromFile
    assert type(choice.resize) is Resize
