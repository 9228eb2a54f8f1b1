"""tools/deployment/export_onnx.py, then tools/infer.py with the checkpoint and with the .onnx file:
the same predictions.json."""
from __future__ import annotations

import json

import torch

from conftest import DEMO_CONFIG, PYTHON, REPO_ROOT, run_tool
from rcnn_det.apis import init_detector


def test_export_then_infer_gives_the_checkpoints_predictions(tmp_path, tiny_shapes_root):
    torch.manual_seed(0)
    model = init_detector(DEMO_CONFIG)
    checkpoint = tmp_path / 'model.pth'
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': ['disc', 'box', 'wedge', 'spark']}}},
               checkpoint)
    onnx_file = tmp_path / 'model.onnx'
    out = run_tool([PYTHON, str(REPO_ROOT / 'tools/deployment/export_onnx.py'), str(DEMO_CONFIG),
                    str(checkpoint), '--out', str(onnx_file), '--dynamic'], cwd=tmp_path)
    assert 'outputs boxes, scores, labels, batch_ids' in out.stdout
    predictions = {}
    for name, weights in (('pth', checkpoint), ('onnx', onnx_file)):
        run_tool([PYTHON, str(REPO_ROOT / 'tools/infer.py'), str(DEMO_CONFIG), str(weights),
                  str(tiny_shapes_root / 'val'), '--out-dir', str(tmp_path / name),
                  '--batch-size', '1', '--score-thr', '0.05'], cwd=tmp_path)
        predictions[name] = json.loads((tmp_path / name / 'predictions.json').read_text())
        assert len(list((tmp_path / name / 'vis').glob('*.png'))) == len(predictions[name])
    assert sum(len(p['instances']) for p in predictions['pth']) > 0
    for a, b in zip(predictions['pth'], predictions['onnx']):
        assert (a['file_name'], a['height'], a['width']) == (b['file_name'], b['height'],
                                                             b['width'])
        assert len(a['instances']) == len(b['instances'])
        for x, y in zip(a['instances'], b['instances']):
            assert x['label'] == y['label'] and x['class_name'] == y['class_name']
            assert abs(x['score'] - y['score']) < 1e-4
            assert max(abs(u - v) for u, v in zip(x['bbox'], y['bbox'])) < 1e-2
