"""tools/analysis_tools/confusion_matrix.py: mmdetection's counting on a hand-built image where
every cell is known and against mmdetection's loops on random boxes; end to end on the
predictions that tools/test.py --out writes for the tiny shapes data (random weights, plus
detections placed on the ground truth), with a crowd region; clear errors for bad inputs."""
from __future__ import annotations

import importlib.util
import json
import pickle
import sys

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from conftest import PYTHON, REPO_ROOT, run_tool, write_tiny_demo_config
from rcnn_det.apis import init_detector

TOOL = REPO_ROOT / 'tools' / 'analysis_tools' / 'confusion_matrix.py'
CLASSES = ('circle', 'square', 'triangle', 'star')
BG = -1   # the background row / column


def load_module(name: str, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cm_tool = load_module('confusion_matrix_tool', TOOL)


def gt(bbox, label, crowd=0) -> dict:
    return dict(bbox=[float(v) for v in bbox], bbox_label=label, ignore_flag=crowd)


def dets(rows) -> dict:
    """(x1, y1, x2, y2, score, label) rows -> a DumpDetResults pred_instances dict."""
    rows = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
    return dict(bboxes=rows[:, :4], scores=rows[:, 4], labels=rows[:, 5].long())


def count(gts, result, num_classes=3, **kwargs) -> np.ndarray:
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    cm_tool.analyze_per_img_dets(matrix, gts, result, **kwargs)
    return matrix


def test_hand_built_image():
    gts = [gt([0, 0, 10, 10], 0), gt([20, 0, 30, 10], 1), gt([40, 0, 50, 10], 2),
           gt([60, 0, 70, 10], 0, crowd=1)]
    result = dets([[0, 0, 10, 10, 0.9, 0],        # true positive on gt 0
                   [1, 0, 10, 10, 0.6, 1],        # also over gt 0, of another class
                   [20, 0, 30, 10, 0.8, 2],       # wrong class on gt 1, which is then missed
                   [100, 100, 110, 110, 0.7, 1],  # nothing there: background
                   [40, 0, 50, 10, 0.1, 2],       # below score_thr: ignored, gt 2 is missed
                   [60, 0, 70, 10, 0.9, 0]])      # on the crowd region, which is no gt
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = expected[0, 1] = expected[1, 2] = 1
    expected[1, BG] = expected[2, BG] = 1          # missed ground truths
    expected[BG, 1] = expected[BG, 0] = 1          # detections on the background
    np.testing.assert_array_equal(count(gts, result, score_thr=0.3), expected)
    # score_thr is inclusive (mmdetection's score >= score_thr): the 0.1 detection finds gt 2
    expected[2, 2], expected[2, BG] = 1, 0
    np.testing.assert_array_equal(count(gts, result, score_thr=0.1), expected)


def test_pairs_counted_as_mmdetection_does():
    # One detection over two ground truths of different classes counts in both rows; the gt of
    # the other class is still missed. Two detections on one gt are two true positives.
    gts = [gt([0, 0, 10, 10], 0), gt([0, 0, 10, 11], 1)]
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = expected[1, 0] = expected[1, BG] = 1
    np.testing.assert_array_equal(count(gts, dets([[0, 0, 10, 10, 0.9, 0]])), expected)
    twice = dets([[0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 0]])
    expected[0, 0] = expected[1, 0] = 2
    np.testing.assert_array_equal(count(gts, twice), expected)
    # class-wise NMS at 0.5 keeps one of the two
    expected[0, 0] = expected[1, 0] = 1
    np.testing.assert_array_equal(count(gts, twice, nms_iou_thr=0.5), expected)


def test_empty_image_and_no_detections():
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[BG, 2] = 1
    np.testing.assert_array_equal(count([], dets([[0, 0, 5, 5, 0.5, 2]])), expected)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[1, BG] = 1
    np.testing.assert_array_equal(count([gt([0, 0, 5, 5], 1)], dets([])), expected)
    with pytest.raises(ValueError, match='detection label 3 is not one of'):
        count([], dets([[0, 0, 5, 5, 0.5, 3]]))


def float32_iou(a, b) -> np.float32:
    """torchvision's box_iou for one pair, in its float32 operation order."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    inter = (max(min(a[2], b[2]) - max(a[0], b[0]), np.float32(0))
             * max(min(a[3], b[3]) - max(a[1], b[1]), np.float32(0)))
    return inter / (area_a + area_b - inter)


def brute_force_count(num_classes, gts, result, score_thr, tp_iou_thr):
    """mmdetection's per-image counting written out as plain loops, pair by pair (crowd
    regions dropped, as mmdet 2.x's get_ann_info drops them) -> (matrix, ground truths with a
    true positive, detections over more than one ground truth)."""
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    gts = [g for g in gts if not g['ignore_flag']]
    true_positives = [0] * len(gts)
    multi = 0
    for box, score, label in zip(*(result[k].tolist() for k in ('bboxes', 'scores', 'labels'))):
        if not np.float32(score) >= np.float32(score_thr):
            continue
        det_match = 0
        for j, g in enumerate(gts):
            if float32_iou(box, g['bbox']) >= tp_iou_thr:
                det_match += 1
                true_positives[j] += g['bbox_label'] == label
                matrix[g['bbox_label'], label] += 1
        if det_match == 0:
            matrix[-1, label] += 1
        multi += det_match > 1
    for num_tp, g in zip(true_positives, gts):
        if num_tp == 0:
            matrix[g['bbox_label'], -1] += 1
    return matrix, sum(tp > 0 for tp in true_positives), multi


def test_random_against_mmdetection_loops():
    # Integer boxes on a small grid: many overlaps, IoUs exactly at the threshold, empty images
    rng = np.random.default_rng(0)
    total = np.zeros((5, 5), dtype=np.int64)
    matrix = np.zeros((5, 5), dtype=np.int64)
    for num_gts, num_dets in [(0, 5), (4, 0), (0, 0)] + [(6, 12)] * 30:
        gts = [gt([x, y, x + w, y + h], int(c), int(crowd)) for x, y, w, h, c, crowd in
               zip(*rng.integers(0, 4, (2, num_gts)), *rng.integers(1, 4, (2, num_gts)),
                   rng.integers(0, 4, num_gts), rng.random(num_gts) < 0.2)]
        xy, wh = rng.integers(0, 4, (num_dets, 2)), rng.integers(1, 4, (num_dets, 2))
        result = dict(bboxes=torch.tensor(np.hstack([xy, xy + wh]), dtype=torch.float32),
                      scores=torch.tensor(rng.choice([0.1, 0.3, 0.5], num_dets),
                                          dtype=torch.float32),
                      labels=torch.tensor(rng.integers(0, 4, num_dets)))
        cm_tool.analyze_per_img_dets(matrix, gts, result, score_thr=0.3, tp_iou_thr=0.5)
        total += brute_force_count(4, gts, result, 0.3, 0.5)[0]
    np.testing.assert_array_equal(matrix, total)


def ground_truth(ann_file) -> dict[int, list[dict]]:
    """The json's boxes as dataset instances, per image id."""
    data = json.loads(ann_file.read_text())
    label_of = {cat['id']: CLASSES.index(cat['name']) for cat in data['categories']}
    per_image = {img['id']: [] for img in data['images']}
    for ann in data['annotations']:
        x, y, w, h = ann['bbox']
        per_image[ann['image_id']].append(
            gt([x, y, x + w, y + h], label_of[ann['category_id']], ann['iscrowd']))
    return per_image


@pytest.fixture(scope='module')
def predictions(tmp_path_factory, tiny_shapes_root):
    """(config, predictions.pkl, ground-truth json with a crowd region) for the tiny val split:
    tools/test.py --out on a random-weights checkpoint, then one more detection per ground truth
    (the first of an image with its class, the others with the next class)."""
    root = tmp_path_factory.mktemp('confusion')
    cfg = write_tiny_demo_config(root / 'tiny.py', tiny_shapes_root)
    torch.manual_seed(0)
    ckpt = root / 'random.pth'
    torch.save(dict(state_dict=init_detector(cfg).state_dict()), ckpt)
    test_tool = load_module('test_tool', REPO_ROOT / 'tools' / 'test.py')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('LOCAL_RANK', '0')
        patch.setattr(sys, 'argv', [
            'tools/test.py', str(cfg), str(ckpt), '--out', str(root / 'raw.pkl'),
            '--work-dir', str(root / 'work'), '--cfg-options',
            'test_dataloader.dataset.pipeline.1.scale=(128,128)',
            'model.test_cfg.rcnn.max_per_img=10', 'default_hooks.visualization.draw=False',
            'default_hooks.visualization.grid_images=0'])
        test_tool.main()
    data = json.loads((tiny_shapes_root / 'annotations' / 'instances_val.json').read_text())
    data['annotations'][-1]['iscrowd'] = 1
    crowd_json = root / 'val_crowd.json'
    crowd_json.write_text(json.dumps(data))
    gts = ground_truth(crowd_json)
    results = pickle.loads((root / 'raw.pkl').read_bytes())
    for res in results:
        boxes = [g['bbox'] for g in gts[res['img_id']]]
        labels = [(g['bbox_label'] + (i > 0)) % len(CLASSES)
                  for i, g in enumerate(gts[res['img_id']])]
        pred = res['pred_instances']
        pred['bboxes'] = torch.cat([pred['bboxes'], torch.tensor(boxes).reshape(-1, 4)])
        pred['scores'] = torch.cat([pred['scores'], torch.full((len(boxes),), 0.9)])
        pred['labels'] = torch.cat([pred['labels'], torch.tensor(labels, dtype=torch.long)])
    (root / 'preds.pkl').write_bytes(pickle.dumps(results))
    return cfg, root / 'preds.pkl', crowd_json


def test_end_to_end(tmp_path, predictions):
    cfg, preds, crowd_json = predictions
    results = pickle.loads(preds.read_bytes())
    scores = torch.cat([res['pred_instances']['scores'] for res in results])
    score_thr = float(scores.median())    # some random detections kept, some not
    out = tmp_path / 'out'
    proc = run_tool([PYTHON, str(TOOL), str(cfg), str(preds), str(out), '--score-thr',
                     str(score_thr), '--cfg-options',
                     f'test_dataloader.dataset.ann_file={crowd_json}'], cwd=tmp_path)
    assert f'{len(results)}/{len(results)}' in proc.stdout     # the progress bar's end
    saved = json.loads((out / 'confusion_matrix.json').read_text())
    assert saved['classes'] == [*CLASSES, 'background']
    matrix = np.array(saved['matrix'])
    assert str(matrix[0, 0]) in proc.stdout and 'background' in proc.stdout
    gts = ground_truth(crowd_json)
    expected, num_tp, multi = np.zeros_like(matrix), 0, 0
    for res in results:
        counts, tps, multis = brute_force_count(len(CLASSES), gts[res['img_id']],
                                          res['pred_instances'], score_thr, 0.5)
        expected, num_tp, multi = expected + counts, num_tp + tps, multi + multis
    np.testing.assert_array_equal(matrix, expected)
    num_gts = sum(not g['ignore_flag'] for image in gts.values() for g in image)
    assert num_tp > 0 and matrix[BG, :BG].sum() > 0
    assert np.triu(matrix[:BG, :BG], 1).sum() + np.tril(matrix[:BG, :BG], -1).sum() > 0
    # every kept detection in one cell of the class columns (none covers two ground truths);
    # every ground truth either found or in the background column
    assert multi == 0 and matrix[:, :BG].sum() == int((scores >= score_thr).sum())
    assert matrix[:BG, BG].sum() + num_tp == num_gts
    png = out / 'confusion_matrix.png'
    assert png.stat().st_size > 0
    assert imread(png).ndim == 3


def run_main(monkeypatch, *args) -> None:
    monkeypatch.setattr(sys, 'argv', ['confusion_matrix.py', *map(str, args)])
    cm_tool.main()


def test_errors(tmp_path, monkeypatch, predictions):
    cfg, preds, _ = predictions
    out = tmp_path / 'out'
    with pytest.raises(SystemExit, match='predictions not found: .*missing.pkl'):
        run_main(monkeypatch, cfg, tmp_path / 'missing.pkl', out)
    not_a_list = tmp_path / 'dict.pkl'
    not_a_list.write_bytes(pickle.dumps({'img_id': 1}))
    with pytest.raises(SystemExit, match='holds dict where a non-empty list of per-image'):
        run_main(monkeypatch, cfg, not_a_list, out)
    old_format = tmp_path / 'mmdet2.pkl'
    old_format.write_bytes(pickle.dumps([[np.zeros((0, 5))] * 4]))
    with pytest.raises(SystemExit, match='result 0 is not a per-image dict'):
        run_main(monkeypatch, cfg, old_format, out)
    results = pickle.loads(preds.read_bytes())
    results[1]['img_id'] = 12345
    unknown = tmp_path / 'unknown.pkl'
    unknown.write_bytes(pickle.dumps(results))
    with pytest.raises(SystemExit, match=r'1 of the 4 predictions are of images that are not '
                                         r'in the test dataset \(img_id \[12345\]\)'):
        run_main(monkeypatch, cfg, unknown, out)
    unknown.write_bytes(pickle.dumps(results[:1]))
    with pytest.raises(SystemExit, match='cover 1 of the 4 images'):
        run_main(monkeypatch, cfg, unknown, out)
    assert not out.exists()
