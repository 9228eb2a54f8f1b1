"""hotcoco, CocoMetric's default evaluator, gives pycocotools' numbers: on a generated set of
2,000 images (crowd regions, every area range, 100 detections each), through CocoMetric, and
through tools/analysis_tools/coco_eval.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mmengine.structures import InstanceData

from conftest import PYTHON, REPO_ROOT, run_tool
from rcnn_det.cocoeval import evaluate, synthetic_case
from rcnn_det.evaluation import CocoMetric
from rcnn_det.structures import DetDataSample

COCO_EVAL = str(REPO_ROOT / 'tools/analysis_tools/coco_eval.py')


@pytest.fixture(scope='module')
def large_case():
    return synthetic_case(2000, 100, seed=0)


@pytest.mark.parametrize('iou_type', ['bbox', 'segm'])
def test_hotcoco_gives_pycocotools_numbers_on_2000_images(large_case, iou_type):
    gt, results = large_case
    assert sum(a['iscrowd'] for a in gt['annotations']) > 500
    areas = np.array([a['area'] for a in gt['annotations']])
    assert (areas < 32 ** 2).sum() > 1000 and (areas > 96 ** 2).sum() > 1000
    # as CocoMetric hands them over: boxes for bbox, masks (area from the mask) for segm
    drop = 'segmentation' if iou_type == 'bbox' else 'bbox'
    results = [{k: v for k, v in r.items() if k != drop} for r in results]
    fast = evaluate(gt, results, iou_type, 'hotcoco')
    reference = evaluate(gt, results, iou_type, 'pycocotools')
    assert 0.01 < reference.stats[0] < 0.5
    np.testing.assert_allclose(fast.stats, reference.stats, rtol=0, atol=1e-6)
    # per class, IoU threshold, recall, area range and maxDets
    assert fast.precision.shape == reference.precision.shape == (10, 101, 10, 4, 3)
    np.testing.assert_allclose(fast.precision, reference.precision, rtol=0, atol=1e-6)
    assert fast.summary == reference.summary


def test_the_metric_numbers_do_not_depend_on_the_backend(tmp_path):
    gt, results = synthetic_case(40, 30, num_classes=3, seed=1)
    ann_file = tmp_path / 'gt.json'
    ann_file.write_text(json.dumps(gt))
    classes = [c['name'] for c in gt['categories']]
    samples = []
    for image in gt['images']:
        mine = [r for r in results if r['image_id'] == image['id']]
        x, y, w, h = torch.tensor([r['bbox'] for r in mine]).unbind(1)
        sample = DetDataSample(metainfo=dict(img_id=image['id'], ori_shape=(256, 256)))
        sample.pred_instances = InstanceData(bboxes=torch.stack([x, y, x + w, y + h], 1),
                                     scores=torch.tensor([r['score'] for r in mine]),
                                     labels=torch.tensor([r['category_id'] - 1 for r in mine]))
        samples.append(sample.to_dict())
    numbers = {}
    for backend in ('hotcoco', 'pycocotools'):
        metric = CocoMetric(ann_file=str(ann_file), classwise=True, backend=backend)
        metric.dataset_meta = dict(classes=classes)
        metric.process({}, samples)
        numbers[backend] = metric.evaluate(len(samples))
    assert numbers['hotcoco'] == numbers['pycocotools']
    assert numbers['hotcoco']['coco/bbox_mAP'] > 0
    with pytest.raises(ValueError, match="CocoMetric: backend must be one of"):
        CocoMetric(ann_file=str(ann_file), backend='faster-coco-eval')


def test_coco_eval_tool_prints_the_numbers_of_either_backend(tmp_path):
    gt, results = synthetic_case(60, 20, seed=2)
    (tmp_path / 'gt.json').write_text(json.dumps(gt))
    (tmp_path / 'results.json').write_text(json.dumps(results))
    printed = {}
    for backend in ('hotcoco', 'pycocotools'):
        out = run_tool([PYTHON, COCO_EVAL, 'gt.json', 'results.json', '--metric', 'bbox', 'segm',
                        '--json', '--backend', backend], cwd=tmp_path).stdout
        printed[backend] = json.loads(out)
    assert printed['hotcoco'] == printed['pycocotools']
    assert set(printed['hotcoco']) == {'bbox', 'segm'}
    assert all(len(v) == 12 for v in printed['hotcoco'].values())
    summary = run_tool([PYTHON, COCO_EVAL, 'gt.json', 'results.json'], cwd=tmp_path).stdout
    assert 'Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]' in summary
    assert f'= {printed["hotcoco"]["bbox"][0]:0.3f}' in summary


def test_coco_eval_tool_names_what_is_wrong(tmp_path):
    (tmp_path / 'gt.json').write_text(json.dumps(dict(images=[])))
    (tmp_path / 'empty.json').write_text('[]')
    for args, message in ((['missing.json', 'empty.json'], 'ground-truth file not found'),
                          (['gt.json', 'empty.json'], 'gt.json is not a COCO ground truth')):
        with pytest.raises(AssertionError, match=message):
            run_tool([PYTHON, COCO_EVAL, *args], cwd=tmp_path)


@pytest.mark.parametrize('max_dets', [(1, 10, 100), (100, 300, 1000)])
def test_the_summary_reads_as_pycocotools_prints_it(max_dets, capsys):
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt, results = synthetic_case(30, 20, seed=3)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        coco_eval = COCOeval(coco, coco.loadRes([dict(r) for r in results]), 'bbox')
        coco_eval.params.maxDets = list(max_dets)
        coco_eval.evaluate()
        coco_eval.accumulate()
    capsys.readouterr()
    coco_eval.summarize()
    printed = capsys.readouterr().out.rstrip()
    assert evaluate(gt, results, 'bbox', 'hotcoco', max_dets=max_dets).summary == printed
