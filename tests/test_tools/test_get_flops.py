"""tools/analysis_tools/get_flops.py: FLOPs of tiny modules equal the textbook formulas, each op
counts once in the per-child split, and the command line reports totals that its rows add up to.
"""
from __future__ import annotations

import importlib.util
import re
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import DEMO_CONFIG, DETR_DEMO_CONFIG, PYTHON, REPO_ROOT, run_tool

TOOL = REPO_ROOT / 'tools' / 'analysis_tools' / 'get_flops.py'


def load_tool():
    """tools/analysis_tools/get_flops.py as a module."""
    sys.path.insert(0, str(TOOL.parent))   # the tool imports benchmark.py next to it
    spec = importlib.util.spec_from_file_location('get_flops_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


get_flops = load_tool()


def test_conv_and_linear_flops_are_the_formulas():
    n, c_in, c_out, k, h, w = 2, 3, 8, 3, 10, 12
    conv = nn.Conv2d(c_in, c_out, k, stride=2, padding=1)
    h_out, w_out = (h + 2 - k) // 2 + 1, (w + 2 - k) // 2 + 1
    linear = nn.Linear(c_out * h_out * w_out, 5)
    model = nn.Sequential(conv, nn.Flatten(), linear)
    result = get_flops.count_flops(model, torch.randn(n, c_in, h, w))
    # One multiply-add = 2 FLOPs; biases add nothing (PyTorch's counter, like fvcore).
    conv_flops = 2 * n * c_out * h_out * w_out * c_in * k * k
    linear_flops = 2 * n * linear.in_features * linear.out_features
    assert result.by_module == {'0': conv_flops, '1': 0, '2': linear_flops, 'other': 0}
    assert result.total == conv_flops + linear_flops
    assert result.by_op == {'aten.convolution': conv_flops, 'aten.addmm': linear_flops}
    assert result.uncounted_ops == []
    assert all(p.requires_grad for p in model.parameters())   # restored after counting


class Head(nn.Module):
    """A head whose only module is a box branch (never called through Head.forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Linear(4, 4, bias=False)


class Decoder(nn.Module):
    """A decoder layer that runs a branch it is handed after its own layer."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4, bias=False)

    def forward(self, x: torch.Tensor, branch: nn.Module) -> torch.Tensor:
        return branch(self.layer(x))   # DETR box refinement: the head's branch, called here


class Detector(nn.Module):
    """decoder -> head branch (called by the decoder), head branch, @ a parameter of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = Decoder()
        self.head = Head()
        self.scale = nn.Parameter(torch.ones(4, 4))   # outside all children

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.decoder(x, self.head.branch)
        x = self.head.branch(x)   # the detector's own code calls the head's branch
        return x @ self.scale


def test_each_op_counts_once_under_the_outermost_child():
    model = Detector()
    result = get_flops.count_flops(model, torch.randn(3, 4))
    one_linear = 2 * 3 * 4 * 4
    assert result.by_module == {'decoder': 2 * one_linear, 'head': one_linear,
                                'other': one_linear}
    assert result.total == 4 * one_linear == sum(result.by_module.values())
    params = get_flops.count_parameters(model)
    assert params == {'decoder': (16, 16), 'head': (16, 16), 'other': (16, 16),
                      'total': (48, 48)}


def test_uncounted_ops_are_listed_and_cpu_attention_is_counted():
    class Sampler(nn.Module):
        """Interpolation and grid_sample (no formulas), and attention on the CPU."""

        def forward(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
            grid = torch.zeros(1, 2, 2, 2)
            sampled = F.grid_sample(F.interpolate(x, scale_factor=2.0), grid,
                                    align_corners=False)
            return sampled.sum() + F.scaled_dot_product_attention(q, q, q).sum()

    b, heads, length, dim = 1, 2, 5, 4
    result = get_flops.count_flops(Sampler(), torch.randn(1, 1, 4, 4),
                                   torch.randn(b, heads, length, dim))
    assert result.uncounted_ops == ['aten.grid_sampler_2d', 'aten.upsample_nearest2d']
    # Two batched products, (L x E) @ (E x L) and (L x L) @ (L x E), per head.
    assert result.total == 2 * (2 * b * heads * length * length * dim)
    assert list(result.by_op) == ['aten._scaled_dot_product_flash_attention_for_cpu']
    assert result.by_module == {'other': result.total}


def test_frozen_parameters_are_not_trainable_and_stay_frozen():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model[0].requires_grad_(False)
    get_flops.count_flops(model, torch.randn(1, 3))
    assert get_flops.count_parameters(model) == {'0': (8, 0), '1': (3, 3), 'other': (0, 0),
                                                 'total': (11, 3)}
    assert not any(p.requires_grad for p in model[0].parameters())


def table_rows(out: str) -> dict[str, tuple[float, ...]]:
    """The per-module table: name -> (GFLOPs, GMACs, %, params M, trainable M)."""
    rows = re.findall(r'^(\w+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)\s+([\d.]+)$', out,
                      flags=re.M)
    return {name: tuple(map(float, numbers)) for name, *numbers in rows}


@pytest.mark.slow
def test_faster_rcnn_report_rows_add_up_to_the_total(tmp_path):
    proc = run_tool([PYTHON, str(TOOL), str(DEMO_CONFIG), '--shape', '224', '224'],
                    cwd=tmp_path)
    out = proc.stdout
    assert 'Input shape: (3, 224, 224)' in out, out
    flops = int(re.search(r'^FLOPs: (\d+) \(([\d.]+) GFLOPs', out, flags=re.M).group(1))
    macs = int(re.search(r'^MACs: (\d+) \(([\d.]+) GMACs', out, flags=re.M).group(1))
    assert flops > 1e9 and macs == flops // 2, out
    rows = table_rows(out)
    assert {'backbone', 'neck', 'rpn_head', 'roi_head', 'other', 'total'} <= set(rows), out
    assert rows['total'][0] == pytest.approx(flops / 1e9, abs=1e-3)
    modules = [name for name in rows if name != 'total']
    for column in (0, 1, 3):   # GFLOPs, GMACs, params (M): printed with 3 decimals
        assert sum(rows[name][column] for name in modules) == pytest.approx(
            rows['total'][column], abs=1e-3 * len(modules))
    assert min(rows[name][0] for name in ('backbone', 'neck', 'rpn_head', 'roi_head')) > 0
    assert rows['other'][0] == 0
    warning = re.search(r'^Warning: not counted .*: (.*)$', out, flags=re.M)
    assert warning and 'torchvision.roi_align' in warning.group(1), out


@pytest.mark.slow
def test_deformable_detr_report(monkeypatch, capsys):
    # main() in this process: a second interpreter would spend most of the time importing.
    monkeypatch.setattr(sys, 'argv', [str(TOOL), str(DETR_DEMO_CONFIG), '--shape', '128'])
    get_flops.main()
    out = capsys.readouterr().out
    assert 'Input shape: (3, 128, 128)' in out, out
    rows = table_rows(out)
    assert {'backbone', 'neck', 'bbox_head', 'other', 'total'} <= set(rows), out
    assert rows['bbox_head'][0] > 0 and rows['bbox_head'][3] > 0, out
    assert sum(v[0] for k, v in rows.items() if k != 'total') == pytest.approx(
        rows['total'][0], abs=1e-3 * (len(rows) - 1))
    assert 'aten.grid_sampler_2d' in out, out
