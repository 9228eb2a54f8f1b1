"""Speed of MultiScaleDeformableAttention at the R50 Deformable-DETR feature sizes.

    python tools/analysis_tools/benchmark_deform_attn.py [--device cpu|cuda] [--iters 10]
        [--warmup 3] [--shape 800 1333] [--batch-size 1] [--num-queries 300] [--threads N]

The levels are those of a ResNet-50 + ChannelMapper on an H x W input at strides 8, 16, 32, 64
((100, 167), (50, 84), (25, 42), (13, 21) for 800 x 1333: N_v = 22,223 tokens). Two calls are
timed with the Co-DETR settings (embed 256, 8 heads, 4 levels, 4 points, dropout 0, seq-first):
the encoder's, where every token is a query with a 2-d reference point, and the decoder's
cross-attention, with ``--num-queries`` queries, 4-d reference boxes and the N_v tokens as value.
"forward" runs under ``torch.no_grad()`` (inference); "fwd+bwd" backpropagates ``out.sum()`` into
the parameters, the query and the value, as in training. Inputs are random; the medians of
``--iters`` timed calls after ``--warmup`` untimed ones are printed in milliseconds. On CUDA the
module uses mmcv's compiled kernel when mmcv has one, else the PyTorch function (printed).
"""
from __future__ import annotations

import argparse
import statistics
from typing import Callable

import torch

from benchmark import time_call  # the detector benchmark next to this script

from rcnn_det.models.layers import MultiScaleDeformableAttention
from rcnn_det.models.layers.ms_deform_attn import _mmcv_cuda_function

STRIDES = (8, 16, 32, 64)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Benchmark multi-scale deformable attention')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--iters', type=int, default=10, help='timed iterations')
    parser.add_argument('--warmup', type=int, default=3, help='untimed iterations first')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'),
                        help='network input height and width')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--num-queries', type=int, default=300, help='decoder queries')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch\'s choice)')
    return parser.parse_args()


def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """(H_l, W_l) at strides 8..64: every stride-2 conv of the backbone rounds up."""
    shapes, h, w = [], height, width
    for stride in (2, 4) + STRIDES:
        h, w = -(-h // 2), -(-w // 2)
        if stride in STRIDES:
            shapes.append((h, w))
    return shapes


def median_ms(fn: Callable[[], None], iters: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    return 1000 * statistics.median(time_call(fn, device) for _ in range(iters))


def attention_calls(module: MultiScaleDeformableAttention, shapes: list[tuple[int, int]],
                    args: argparse.Namespace, device: torch.device) -> dict[str, dict]:
    """Keyword arguments of the encoder and the decoder call (seq-first, as in Co-DETR)."""
    g = torch.Generator().manual_seed(0)
    B, C, L = args.batch_size, module.embed_dims, len(shapes)
    num_values = sum(h * w for h, w in shapes)
    spatial_shapes = torch.tensor(shapes, device=device)
    common = dict(spatial_shapes=spatial_shapes,
                  key_padding_mask=torch.zeros(B, num_values, dtype=torch.bool, device=device))
    memory = torch.randn(num_values, B, C, generator=g).to(device)
    encoder = dict(query=memory, query_pos=torch.randn(num_values, B, C, generator=g).to(device),
                   reference_points=torch.rand(B, num_values, L, 2, generator=g).to(device),
                   **common)
    Q = args.num_queries
    boxes = torch.cat([torch.rand(B, Q, 1, 2, generator=g) * 0.8 + 0.1,
                       torch.rand(B, Q, 1, 2, generator=g) * 0.3 + 0.02], -1).expand(B, Q, L, 4)
    decoder = dict(query=torch.randn(Q, B, C, generator=g).to(device), value=memory,
                   query_pos=torch.randn(Q, B, C, generator=g).to(device),
                   reference_points=boxes.to(device), **common)
    return dict(encoder=encoder, decoder=decoder)


def steps(module: MultiScaleDeformableAttention, kwargs: dict) -> tuple[Callable, Callable]:
    """(inference forward, training forward + backward) of one call."""
    def forward():
        with torch.no_grad():
            module(**kwargs)

    leaves = {k: v.detach().requires_grad_() for k, v in kwargs.items()
              if k in ('query', 'value')}

    def forward_backward():
        module.zero_grad(set_to_none=True)
        module(**{**kwargs, **leaves}).sum().backward()

    return forward, forward_backward


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = level_shapes(*args.shape)
    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(embed_dims=256, num_heads=8, num_levels=len(shapes),
                                           num_points=4, dropout=0.0).to(device)
    kernel = device.type == 'cuda' and _mmcv_cuda_function() is not None
    print(f'MultiScaleDeformableAttention on {device} '
          f'({"mmcv CUDA kernel" if kernel else "PyTorch grid_sample"}; '
          f'{torch.get_num_threads()} CPU threads), batch {args.batch_size}, input '
          f'{args.shape[0]}x{args.shape[1]} -> levels {shapes} '
          f'(N_v = {sum(h * w for h, w in shapes)}), median of {args.iters} timed calls after '
          f'{args.warmup}')
    print(f'{"":34s} {"forward ms":>11s} {"fwd+bwd ms":>11s}')
    for name, kwargs in attention_calls(module, shapes, args, device).items():
        forward, forward_backward = steps(module, kwargs)
        fwd = median_ms(forward, args.iters, args.warmup, device)
        bwd = median_ms(forward_backward, args.iters, args.warmup, device)
        queries = kwargs['query'].shape[0]
        ref = kwargs['reference_points'].shape[-1]
        print(f'{name + f" ({queries} queries, {ref}-d ref)":34s} {fwd:11.1f} {bwd:11.1f}')


if __name__ == '__main__':
    main()
