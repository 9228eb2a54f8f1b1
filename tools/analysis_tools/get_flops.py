"""FLOPs and parameters of a config's model, in total and per top-level module.

    python tools/analysis_tools/get_flops.py CONFIG [--shape H [W]] [--cfg-options KEY=VALUE ...]

    python tools/analysis_tools/get_flops.py configs/demo/faster_rcnn_r18_fpn_shapes.py \\
        --shape 224 224

The model is built from the config with random weights (a pretrained backbone ``init_cfg`` is
dropped, nothing is read from disk) and runs ONE inference pass (``mode='predict'``, post-processing
included) on the CPU, on one random image of ``--shape`` (default 1280 x 800, mmdetection's
default; one number means a square; the demo configs resize to at most 224 px, so ``--shape 224``
suits them). The image goes through the model's data preprocessor first (normalise, pad to the
size divisor), outside the count, so the network input may be padded beyond ``--shape``.

FLOPs are counted by PyTorch's ``torch.utils.flop_counter.FlopCounterMode``, which counts one
multiply-add as 2 FLOPs. mmdetection's ``get_flops.py`` (fvcore / ``mmengine.analysis``) reports
multiply-adds under the name "Flops"; that figure is printed as GMACs = FLOPs / 2. Only ops with
a formula are counted (matrix products, convolutions, scaled dot-product attention; the CPU kernel
of the latter is added here); elementwise ops (add, relu, sigmoid, softmax, ...) are not, as in
fvcore. Ops with arithmetic that have no formula here (normalisation layers, interpolation,
``grid_sample`` of deformable attention, RoIAlign, NMS, ...) are listed in a warning line when the
model ran any; ``mmengine.analysis`` has formulas for the first three, and mmdetection counts
``mode='tensor'`` (no post-processing), so its figure can differ slightly from the GMACs here.

The per-module table splits the total over the detector's direct children (``backbone``,
``neck``, ``rpn_head``, ``roi_head``, ``bbox_head``, ``query_head``, ...): an op counts under the
child that holds the outermost module running it (a head's branch called by a decoder counts in
the decoder's child), once, so the rows add up to the total. ``other`` is what ran outside every
child's modules: the detector's own code, and a child's own methods outside its submodules when
the child is used through a method other than ``forward`` (``roi_head.predict``). Parts whose
size depends on the data (RoIs kept after NMS, queries selected in two-stage DETRs) count what
the random image produced, usually ``max_per_img``.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any

import torch
from mmengine.config import Config, DictAction
from torch import nn
from torch.nn.modules.module import (register_module_forward_hook,
                                     register_module_forward_pre_hook)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from benchmark import build_model  # the detector benchmark next to this script

from rcnn_det.structures import DetDataSample

# Ops that do arithmetic beyond elementwise work: when one of them runs without a formula in the
# counter, the total misses it. Names are matched without their namespace ('aten.', ...).
UNCOUNTED_ARITHMETIC = re.compile(r'norm|upsample|avg_pool|grid_sampler|roi_align|roi_pool|nms'
                                  r'|deform_conv|attention|cdist|conv|einsum|linear'
                                  r'|^_?(add|badd|int_|scaled_)?b?mm$|^(add)?mv$|^v?dot$')


def _cpu_sdpa_flops(query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size,
                    *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of the CPU attention kernel: the same two batched products as the GPU kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# FlopCounterMode has formulas for the GPU kernels of scaled_dot_product_attention only; without
# this one, attention on the CPU would silently count zero.
EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


class PerChildFlops(TorchDispatchMode):
    """Run inside a ``FlopCounterMode``: adds the FLOPs the counter counted for each op to the
    direct child of ``model`` that holds the outermost running module, and records the ops with
    arithmetic that the counter had no formula for.

    Attributing by the outermost module puts a head's branches called by the decoder (DETR box
    refinement) under the decoder's child, and the same branches called by the detector's own code
    under the head's: each op counts once, so the children and 'other' add up to the total.
    """

    def __init__(self, model: nn.Module, counter: FlopCounterMode) -> None:
        super().__init__()
        self.counter = counter
        self.owner: dict[nn.Module, str] = {}   # every submodule -> its direct child's name
        for name, child in model.named_children():
            for module in child.modules():
                self.owner.setdefault(module, name)
        self.running: list[str] = []   # owners of the running submodules, outermost first
        self.flops = dict.fromkeys([*(name for name, _ in model.named_children()), 'other'], 0)
        self.uncounted: set[str] = set()

    def enter_module(self, module: nn.Module, args: Any) -> None:
        """Forward pre-hook of every module."""
        if module in self.owner:
            self.running.append(self.owner[module])

    def exit_module(self, module: nn.Module, args: Any, output: Any) -> None:
        """Forward hook of every module."""
        if module in self.owner:
            self.running.pop()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = self.counter.get_total_flops()
        out = func(*args, **(kwargs or {}))
        flops = self.counter.get_total_flops() - before
        self.flops[self.running[0] if self.running else 'other'] += flops
        op = getattr(func, 'overloadpacket', func)
        if (flops == 0 and op not in self.counter.flop_registry
                and UNCOUNTED_ARITHMETIC.search(str(op).rsplit('.', 1)[-1])):
            self.uncounted.add(str(op))
        return out


@dataclass
class FlopCount:
    """The FLOPs (one multiply-add = 2 FLOPs) of one call of a model."""
    total: int
    by_module: dict[str, int]    # direct child name -> FLOPs; 'other': outside all children
    by_op: dict[str, int]        # 'aten.convolution' -> FLOPs
    uncounted_ops: list[str]     # ops with arithmetic that ran but have no formula


def count_flops(model: nn.Module, *args: Any, **kwargs: Any) -> FlopCount:
    """Count the FLOPs of ``model(*args, **kwargs)`` (under ``torch.no_grad``), in total, per
    direct child of ``model`` (see ``PerChildFlops``) and per op."""
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS)
    per_child = PerChildFlops(model, counter)
    # The counter's module tracker hooks the backward pass of every input that requires grad,
    # which fails under no_grad for a parameter passed to a submodule (DINO's query embedding):
    # no parameter requires grad while counting.
    trainable = [p for p in model.parameters() if p.requires_grad]
    hooks = [register_module_forward_pre_hook(per_child.enter_module),
             register_module_forward_hook(per_child.exit_module, always_call=True)]
    try:
        for p in trainable:
            p.requires_grad_(False)
        # per_child is the inner mode: each op passes through the counter before it returns.
        with torch.no_grad(), counter, per_child:
            model(*args, **kwargs)
    finally:
        for p in trainable:
            p.requires_grad_(True)
        for hook in hooks:
            hook.remove()
    by_op = {str(op): flops for op, flops in counter.get_flop_counts().get('Global', {}).items()}
    return FlopCount(counter.get_total_flops(), per_child.flops, by_op,
                     sorted(per_child.uncounted))


def count_parameters(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(all, trainable) parameter counts per direct child, 'other' (parameters of the model
    outside all children) and 'total'."""
    def sizes(params: list[nn.Parameter]) -> tuple[int, int]:
        return (sum(p.numel() for p in params),
                sum(p.numel() for p in params if p.requires_grad))

    counts, in_children = {}, set()
    for name, child in model.named_children():
        params = list(child.parameters())
        in_children.update(id(p) for p in params)
        counts[name] = sizes(params)
    counts['other'] = sizes([p for p in model.parameters() if id(p) not in in_children])
    counts['total'] = sizes(list(model.parameters()))
    return counts


def random_input(model: nn.Module, shape: tuple[int, int]) -> dict[str, Any]:
    """One random uint8 image of ``shape`` (H, W) through the model's data preprocessor:
    dict(inputs=(1, 3, H', W') float, data_samples=[DetDataSample]) with H', W' >= H, W."""
    h, w = shape
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                         scale_factor=(1.0, 1.0)))
    # The preprocessor adds batch_input_shape and pad_shape to the metainfo.
    return model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)


def print_report(config: str, model: nn.Module, data: dict[str, Any], flops: FlopCount,
                 params: dict[str, tuple[int, int]]) -> None:
    """Print the totals, the per-module table, the per-op totals and the warning about
    uncounted ops."""
    giga, mega = 1e9, 1e6
    h, w = data['data_samples'][0].img_shape
    print(f'{config}: {type(model).__name__}, one image, mode=predict, on the CPU')
    print(f'Input shape: (3, {h}, {w}), network input after the data preprocessor: '
          f'{tuple(data["inputs"].shape[1:])}')
    print(f'FLOPs: {flops.total} ({flops.total / giga:.3f} GFLOPs; FlopCounterMode counts one '
          'multiply-add as 2 FLOPs)')
    print(f'MACs: {flops.total // 2} ({flops.total / 2 / giga:.3f} GMACs = FLOPs / 2; '
          'mmdetection and fvcore report this figure as "Flops")')
    total_params, trainable = params['total']
    print(f'Params: {total_params / mega:.3f} M total, {trainable / mega:.3f} M trainable')
    print()
    rows = [(name, module_flops, params[name]) for name, module_flops in flops.by_module.items()]
    rows.append(('total', flops.total, params['total']))
    width = max(len(name) for name, _, _ in rows)
    print(f'{"module":{width}s} {"GFLOPs":>10s} {"GMACs":>10s} {"% FLOPs":>8s} '
          f'{"params (M)":>11s} {"trainable (M)":>14s}')
    for name, module_flops, (n_all, n_trainable) in rows:
        share = 100 * module_flops / flops.total if flops.total else 0.0
        print(f'{name:{width}s} {module_flops / giga:10.3f} {module_flops / 2 / giga:10.3f} '
              f'{share:7.1f}% {n_all / mega:11.3f} {n_trainable / mega:14.3f}')
    print()
    print('By op (GFLOPs): ' + ', '.join(f'{op} {op_flops / giga:.3f}'
                                         for op, op_flops in flops.by_op.items()))
    if flops.uncounted_ops:
        print(f'Warning: not counted (FlopCounterMode has no formula for them): '
              f'{", ".join(flops.uncounted_ops)}')
    print('Elementwise ops (add, relu, sigmoid, softmax, ...) are never counted, as in fvcore.')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Count a config's model FLOPs and parameters")
    parser.add_argument('config')
    parser.add_argument('--shape', type=int, nargs='+', default=[1280, 800], metavar='SIZE',
                        help='input image height and width, one number for a square '
                             "(default: 1280 800, mmdetection's)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, KEY=VALUE as in tools/train.py')
    args = parser.parse_args()
    if len(args.shape) not in (1, 2):
        parser.error('--shape takes H W or one number for a square')
    return args


def main() -> None:
    args = parse_args()
    shape = (args.shape[0], args.shape[-1])
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    torch.manual_seed(0)
    model = build_model(cfg, torch.device('cpu')).eval()
    data = random_input(model, shape)
    flops = count_flops(model, data['inputs'], data['data_samples'], mode='predict')
    print_report(args.config, model, data, flops, count_parameters(model))


if __name__ == '__main__':
    main()
