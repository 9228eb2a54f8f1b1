"""tools/analysis_tools/benchmark.py measures both frameworks and prints their ratio."""
import re

import pytest

from conftest import DEMO_CONFIG, PYTHON, REPO_ROOT, run_tool

pytestmark = pytest.mark.slow


def test_benchmark_compares_with_torchvision(tmp_path):
    proc = run_tool([PYTHON, str(REPO_ROOT / 'tools/analysis_tools/benchmark.py'),
                     str(DEMO_CONFIG), '--batch-size', '1', '--shape', '128', '160',
                     '--iters', '1', '--warmup', '0', '--device', 'cpu',
                     '--compare', 'torchvision'], cwd=tmp_path)
    out = proc.stdout
    rows = {m.group(1): tuple(float(m.group(i)) for i in (2, 4, 5, 6))
            for m in re.finditer(r'^(rcnn_det|torchvision)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)'
                                 r'\s+([\d.]+)\s+([\d.]+)$', out, flags=re.M)}
    assert set(rows) == {'rcnn_det', 'torchvision'}, out
    # train it/s, infer img/s, and the GFLOP/s achieved in training and inference
    assert all(v > 0 for row in rows.values() for v in row)
    ratio = re.search(r'^ratio\s+([\d.]+)x\s+([\d.]+)x', out, flags=re.M)
    assert ratio, out
    # The printed ratio is the quotient of the printed speeds (rounding aside).
    assert float(ratio.group(1)) == pytest.approx(rows['rcnn_det'][0] / rows['torchvision'][0],
                                                  rel=0.05, abs=0.02)


@pytest.mark.parametrize('config', ['configs/demo/atss_r18_fpn_shapes.py',
                                    'configs/demo/mask_rcnn_r18_fpn_shapes.py',
                                    'configs/demo/co_deformable_detr_r18_shapes.py'])
def test_benchmark_runs_one_stage_mask_and_co_detr_configs(tmp_path, config):
    proc = run_tool([PYTHON, str(REPO_ROOT / 'tools/analysis_tools/benchmark.py'),
                     str(REPO_ROOT / config), '--batch-size', '1', '--shape', '128', '160',
                     '--iters', '1', '--warmup', '0', '--device', 'cpu'], cwd=tmp_path)
    row = re.search(r'^rcnn_det\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$',
                    proc.stdout, flags=re.M)
    assert row, proc.stdout
    # it/s, img/s and the GFLOP/s achieved in training and inference
    assert all(float(row.group(i)) > 0 for i in (1, 3, 4, 5)), proc.stdout
    memory = re.search(r'^peak memory: (\d+) MB \(resident set of the process\)$', proc.stdout,
                       flags=re.M)
    assert memory and int(memory.group(1)) > 100, proc.stdout


def test_deformable_attention_benchmark(tmp_path):
    proc = run_tool([PYTHON, str(REPO_ROOT / 'tools/analysis_tools/benchmark_deform_attn.py'),
                     '--shape', '64', '96', '--iters', '1', '--warmup', '0', '--device', 'cpu'],
                    cwd=tmp_path)
    assert 'levels [(8, 12), (4, 6), (2, 3), (1, 2)] (N_v = 128)' in proc.stdout, proc.stdout
    rows = re.findall(r'^(encoder|decoder) .*?\s([\d.]+)\s+([\d.]+)$', proc.stdout, flags=re.M)
    assert [r[0] for r in rows] == ['encoder', 'decoder'], proc.stdout
    assert all(float(fwd) > 0 and float(both) > 0 for _, fwd, both in rows)


def test_benchmark_compares_onnxruntime_with_pytorch(tmp_path):
    proc = run_tool([PYTHON, str(REPO_ROOT / 'tools/analysis_tools/benchmark.py'),
                     str(DEMO_CONFIG), '--batch-size', '1', '--shape', '128', '160',
                     '--iters', '1', '--warmup', '0', '--device', 'cpu',
                     '--compare', 'onnxruntime'], cwd=tmp_path)
    out = proc.stdout
    rows = {m.group(1): float(m.group(2))
            for m in re.finditer(r'^(rcnn_det|onnxruntime)\s+([\d.]+)\s+([\d.]+)$', out,
                                 flags=re.M)}
    assert set(rows) == {'rcnn_det', 'onnxruntime'} and min(rows.values()) > 0, out
    ratio = re.search(r'^ratio\s+([\d.]+)x', out, flags=re.M)
    assert ratio, out
    assert float(ratio.group(1)) == pytest.approx(rows['onnxruntime'] / rows['rcnn_det'],
                                                  rel=0.05, abs=0.02)
