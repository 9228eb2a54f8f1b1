"""End to end through the real tools on a tiny shapes dataset: train, test, resume, DDP."""
from __future__ import annotations

import json
import pickle
import re

import pytest
import torch

from conftest import (ATSS_DEMO_CONFIG, CO_DETR_DEMO_CONFIG, CO_DINO_DEMO_CONFIG,
                      DETR_DEMO_CONFIG, DINO_DEMO_CONFIG, MASK_DEMO_CONFIG, PYTHON, REPO_ROOT,
                      VGG_DEMO_CONFIG, free_port, run_tool, write_tiny_demo_config)
from rcnn_det.engine import register_checkpoint_safe_globals

pytestmark = pytest.mark.slow


def val_image_ids(shapes_root) -> list:
    ann = json.loads((shapes_root / 'annotations' / 'instances_val.json').read_text())
    return sorted(img['id'] for img in ann['images'])


def test_train_then_test(tmp_path, tiny_shapes_root):
    cfg = write_tiny_demo_config(tmp_path / 'tiny.py', tiny_shapes_root)
    work = tmp_path / 'work'
    proc = run_tool([PYTHON, str(REPO_ROOT / 'tools/train.py'), str(cfg), '--work-dir',
                     str(work), '--auto-scale-lr'], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert 'Iter(train) [2/2]' in log
    # --auto-scale-lr: 2 images per iteration against the demo's base of 4 halve lr 1e-3, which
    # the tiny config's 2-iteration warm-up reaches at iteration 2.
    assert 'Scaling the original LR by 0.5' in log
    assert re.search(r'Iter\(train\) \[2/2\]\s+lr: 5\.0000e-04', log)
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log), log[-3000:]
    assert 'Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all' in log
    assert (work / 'iter_2.pth').is_file()
    assert (work / 'predictions.png').is_file()

    out = tmp_path / 'results.pkl'
    proc = run_tool([PYTHON, str(REPO_ROOT / 'tools/test.py'), str(cfg), str(work / 'iter_2.pth'),
                     '--work-dir', str(work), '--show-dir', 'vis', '--out', str(out)],
                    cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log)
    results = pickle.load(open(out, 'rb'))
    assert [r['img_id'] for r in results] == val_image_ids(tiny_shapes_root)  # each, once
    for r in results:
        pred = r['pred_instances']
        assert pred['bboxes'].shape[1] == 4
        assert pred['bboxes'].shape[0] == pred['scores'].shape[0] == pred['labels'].shape[0]
    assert len(list(work.glob('*/vis/*.png'))) == 4

    # Continue the same run to 3 iterations from its latest checkpoint (training longer than
    # planned: a larger max_iters on resume).
    register_checkpoint_safe_globals()  # what the tools do: weights_only loads need it
    first = torch.load(work / 'iter_2.pth', map_location='cpu', weights_only=True)
    proc = run_tool([PYTHON, str(REPO_ROOT / 'tools/train.py'), str(cfg), '--work-dir', str(work),
                     '--resume', '--cfg-options', 'train_cfg.max_iters=3',
                     'train_cfg.val_interval=3'], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 0, iter: 2' in log
    assert 'Iter(train) [3/3]' in log and 'Iter(train) [1/3]' not in log
    last = torch.load(work / 'iter_3.pth', map_location='cpu', weights_only=True)
    assert last['meta']['iter'] == 3
    # The optimizer and scheduler states travelled: momentum buffers exist and the scheduler
    # continued (its global step counts every iteration of both runs).
    assert last['optimizer']['state'], 'optimizer state was not restored'
    assert last['param_schedulers'][0]['_global_step'] == 3
    assert set(last['state_dict']) == set(first['state_dict'])


def test_mask_rcnn_train_then_test(tmp_path, tiny_shapes_root):
    """The Mask R-CNN demo through the tools: both COCO summaries, masks in the saved results."""
    cfg = write_tiny_demo_config(tmp_path / 'tiny_mask.py', tiny_shapes_root,
                                 base=MASK_DEMO_CONFIG)
    work = tmp_path / 'work'
    proc = run_tool([PYTHON, str(REPO_ROOT / 'tools/train.py'), str(cfg), '--work-dir',
                     str(work)], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert re.search(r'Iter\(train\) \[2/2\].*loss_mask: [0-9.]+', log), log[-3000:]
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log), log[-3000:]
    assert re.search(r'coco/segm_mAP: -?[0-9.]+', log), log[-3000:]
    assert (work / 'predictions.png').is_file()

    out = tmp_path / 'results.pkl'
    proc = run_tool([PYTHON, str(REPO_ROOT / 'tools/test.py'), str(cfg), str(work / 'iter_2.pth'),
                     '--work-dir', str(work), '--out', str(out), '--show-dir', 'vis'],
                    cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert re.search(r'coco/segm_mAP: -?[0-9.]+', log), log[-3000:]
    assert len(list(work.glob('*/vis/*.png'))) == 4
    assert log.count('Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all') == 2  # bbox, segm
    results = pickle.load(open(out, 'rb'))
    assert [r['img_id'] for r in results] == val_image_ids(tiny_shapes_root)
    for r in results:
        pred = r['pred_instances']
        assert len(pred['masks']) == pred['bboxes'].shape[0]
        assert all(rle['size'] == list(r['ori_shape']) for rle in pred['masks'])


@pytest.mark.parametrize('base, losses', [
    (ATSS_DEMO_CONFIG, r'loss_cls: [0-9.]+.*loss_bbox: [0-9.]+.*loss_centerness: [0-9.]+'),
    # per decoder layer (d0 ... last) and, two-stage, the encoder proposals
    (DETR_DEMO_CONFIG, r'd0\.loss_cls: [0-9.]+.* loss_iou: [0-9.]+.*enc_loss_cls: [0-9.]+'),
    # seed 003's VGG16 Faster R-CNN: one stride-16 map, no FPN, RoIPool
    (VGG_DEMO_CONFIG, r'loss_rpn_cls: [0-9.]+.*loss_rpn_bbox: [0-9.]+.*loss_cls: [0-9.]+'),
    # Co-DETR: the query head's, the auxiliary heads' (suffixed) and the positive queries'
    (CO_DETR_DEMO_CONFIG, r'enc_loss_cls: [0-9.]+.*loss_rpn_cls: [0-9.]+.*loss_cls0: [0-9.]+'
                          r'.*loss_centerness1: [0-9.]+.*loss_cls_aux0: [0-9.]+'
                          r'.*loss_iou_aux1: [0-9.]+'),
    # DINO: matching, encoder and denoising terms
    (DINO_DEMO_CONFIG, r'd0\.loss_cls: [0-9.]+.*enc_loss_cls: [0-9.]+.*dn_loss_iou: [0-9.]+'),
    # Co-DINO: DINO's, the auxiliary heads' and the positive queries'
    (CO_DINO_DEMO_CONFIG, r'dn_loss_cls: [0-9.]+.*loss_rpn_cls: [0-9.]+.*loss_cls0: [0-9.]+'
                          r'.*loss_centerness1: [0-9.]+.*loss_cls_aux0: [0-9.]+'),
], ids=['atss', 'deformable_detr', 'faster_rcnn_vgg16', 'co_deformable_detr', 'dino',
        'co_dino'])
def test_more_demos_train_then_test(tmp_path, tiny_shapes_root, base, losses):
    """The ATSS, Deformable DETR, VGG16 Faster R-CNN, Co-DETR, DINO and Co-DINO demos through
    the tools: their losses logged, COCO bbox mAP reported by training's validation and by the
    test tool, the predictions drawn."""
    cfg = write_tiny_demo_config(tmp_path / 'tiny.py', tiny_shapes_root, base=base)
    work = tmp_path / 'work'
    # two iterations leave every score of the VGG16 demo's box head under its score_thr, and
    # CocoMetric (like mmdetection's) reports no mAP for an empty result set
    options = (['--cfg-options', 'model.test_cfg.rcnn.score_thr=0.0']
               if base == VGG_DEMO_CONFIG else [])
    proc = run_tool([PYTHON, str(REPO_ROOT / 'tools/train.py'), str(cfg), '--work-dir',
                     str(work), *options], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert re.search(r'Iter\(train\) \[2/2\].*' + losses, log), log[-3000:]
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log), log[-3000:]
    assert (work / 'predictions.png').is_file()
    proc = run_tool([PYTHON, str(REPO_ROOT / 'tools/test.py'), str(cfg), str(work / 'iter_2.pth'),
                     '--work-dir', str(work), *options], cwd=tmp_path)
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', proc.stdout + proc.stderr)


def test_two_process_distributed_training(tmp_path, tiny_shapes_root):
    out = tmp_path / 'val_results.pkl'
    extra = (f"val_evaluator = [dict(type='CocoMetric', ann_file=data_root + "
             f"'annotations/instances_val.json', metric='bbox'), "
             f"dict(type='DumpDetResults', out_file_path={str(out)!r})]\n")
    cfg = write_tiny_demo_config(tmp_path / 'tiny.py', tiny_shapes_root, extra=extra)
    work = tmp_path / 'work'
    # A port of its own for each launch: the scripts' default 29500 may be taken, or still
    # held by the previous launch's rendezvous.
    proc = run_tool(['bash', str(REPO_ROOT / 'tools/dist_train.sh'), str(cfg), '2',
                     '--work-dir', str(work)], cwd=tmp_path, env=dict(PORT=str(free_port())))
    log = proc.stdout + proc.stderr
    assert 'Distributed launcher: pytorch' in log and 'GPU number: 2' in log
    assert (work / 'iter_2.pth').is_file()
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log)
    # Each process predicted half of the 4 val images; the dump holds all of them, once each.
    results = pickle.load(open(out, 'rb'))
    assert sorted(r['img_id'] for r in results) == val_image_ids(tiny_shapes_root)

    # tools/dist_test.sh gathers the test predictions of both processes the same way.
    test_out = tmp_path / 'test_results.pkl'
    proc = run_tool(['bash', str(REPO_ROOT / 'tools/dist_test.sh'), str(cfg),
                     str(work / 'iter_2.pth'), '2', '--work-dir', str(work), '--out',
                     str(test_out)], cwd=tmp_path, env=dict(PORT=str(free_port())))
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', proc.stdout + proc.stderr)
    results = pickle.load(open(test_out, 'rb'))
    assert sorted(r['img_id'] for r in results) == val_image_ids(tiny_shapes_root)
