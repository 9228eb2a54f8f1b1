"""Training and inference speed of a config's model on the current device.

    python tools/analysis_tools/benchmark.py CONFIG [--batch-size 2] [--shape 800 1333]
        [--iters 10] [--warmup 3] [--device cpu|cuda] [--compare torchvision]

Inputs are random images of one fixed shape with a few random ground-truth boxes each, so the
numbers measure the model (backbone to losses / detections), not data loading. Training
iterations/s include forward, backward and an SGD step; inference images/s include
post-processing; the peak memory is printed too. Any detector config works (Faster/Mask R-CNN,
ATSS, Deformable DETR, Co-DETR, ...). With ``--compare
torchvision`` torchvision's ``fasterrcnn_resnet50_fpn`` (random
init, 81 classes, backbone frozen like the mmdet recipe: stem + layer1 frozen, frozen BN) runs on
the same inputs, and the ratios are printed. With ``--compare onnxruntime`` the model is
exported to ONNX (``rcnn_det.deployment.export_onnx``, static shape, the given batch size) and
the exported computation (network, post-processing, rescale; after the preprocessor, before
mask pasting) is timed in PyTorch and in onnxruntime (CPU, as many threads as PyTorch) on the
same preprocessed batch. The sides take turns, one step each, and the median step time is
reported, so that a machine whose speed drifts (shared CPUs, clock scaling) affects both alike.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Callable

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

from rcnn_det.registry import MODELS
from rcnn_det.structures import DetDataSample, meta_pairs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Benchmark a detector config')
    parser.add_argument('config')
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'),
                        help='network input height and width')
    parser.add_argument('--iters', type=int, default=10, help='timed iterations')
    parser.add_argument('--warmup', type=int, default=3, help='untimed iterations first')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--compare', choices=['torchvision', 'onnxruntime'], default=None,
                        help="torchvision's Faster R-CNN on the same inputs, or the config's "
                             'model exported to ONNX and run by onnxruntime (inference only)')
    parser.add_argument('--num-gts', type=int, default=5, help='ground-truth boxes per image')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args()


def random_batch(batch_size: int, shape: tuple[int, int], num_gts: int, num_classes: int,
                 seed: int = 0,
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Images (uint8, 3 x H x W), gt boxes (num_gts, 4) xyxy and labels, the same every call."""
    g = torch.Generator().manual_seed(seed)
    h, w = shape
    images, boxes, labels = [], [], []
    for _ in range(batch_size):
        images.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
        xy = torch.rand(num_gts, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 32 + torch.rand(num_gts, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        boxes.append(torch.cat([xy, xy + wh], 1))
        labels.append(torch.randint(0, num_classes, (num_gts,), generator=g))
    return images, boxes, labels


def box_masks(boxes: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(G, 4) boxes -> (G, H, W) uint8 masks filling each box."""
    ys = torch.arange(shape[0], dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(shape[1], dtype=torch.float32)[None, None, :] + 0.5
    x1, y1, x2, y2 = (c[:, None, None] for c in boxes.unbind(1))
    return ((xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)).to(torch.uint8)


def time_call(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes (waiting for the GPU to finish)."""
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_step_times(steps: dict[str, Callable[[], None]], iters: int, warmup: int,
                      device: torch.device) -> dict[str, float]:
    """Median seconds per call of each step; the steps take turns, one call each."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iters):
        for name, fn in steps.items():
            times[name].append(time_call(fn, device))
    return {name: statistics.median(ts) for name, ts in times.items()}


def build_model(cfg: Config, device: torch.device) -> torch.nn.Module:
    """The config's model on ``device`` with random weights (nothing read from disk); also
    get_flops.py's."""
    if (cfg.model.get('backbone') or {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope') or 'rcnn_det'):
        model = MODELS.build(cfg.model).to(device)
    MMLogger.get_current_instance().setLevel(logging.WARNING)   # mmengine's per-parameter log
    model.init_weights()
    return model


def rcnn_det_steps(cfg: Config, batch, args, device
                   ) -> tuple[Callable, Callable, torch.nn.Module]:
    """(train step, inference step, the model) of the config's model on ``batch``."""
    model = build_model(cfg, device)
    images, boxes, labels = batch
    h, w = args.shape
    masks = [box_masks(b, (h, w)) for b in boxes]   # for models with a mask head

    def samples():
        out = []
        for b, l, m in zip(boxes, labels, masks):
            s = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                            scale_factor=(1.0, 1.0)))
            s.gt_instances = InstanceData(bboxes=b.clone(), labels=l.clone(), masks=m)
            out.append(s)
        return out

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                momentum=0.9)

    def train_step():
        model.train()
        data = model.data_preprocessor(dict(inputs=list(images), data_samples=samples()), True)
        losses = model(**data, mode='loss')
        loss, _ = model.parse_losses(losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer_step():
        model.eval()
        data = model.data_preprocessor(dict(inputs=list(images), data_samples=samples()), False)
        model(**data, mode='predict')

    return train_step, infer_step, model


def onnxruntime_steps(cfg: Config, batch, args) -> dict[str, Callable[[], None]]:
    """{'rcnn_det': PyTorch, 'onnxruntime': the exported file} inference steps on one
    preprocessed batch (CPU)."""
    import tempfile

    import onnxruntime

    from rcnn_det.deployment import ExportableDetector, export_onnx

    model = build_model(cfg, torch.device('cpu')).eval()
    images, _, _ = batch
    h, w = args.shape
    samples = [DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                           scale_factor=(1.0, 1.0))) for _ in images]
    data = model.data_preprocessor(dict(inputs=list(images), data_samples=samples), False)
    metas = [s.metainfo for s in data['data_samples']]
    inputs = (data['inputs'], meta_pairs(metas, 'img_shape', 'cpu', torch.long),
              meta_pairs(metas, 'scale_factor', 'cpu'))
    with tempfile.TemporaryDirectory() as folder:
        file = f'{folder}/model.onnx'
        export_onnx(model, file, tuple(data['inputs'].shape[-2:]), batch_size=len(images))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(file, options,
                                               providers=['CPUExecutionProvider'])
    feed = dict(zip(('images', 'img_shapes', 'scale_factors'), (t.numpy() for t in inputs)))
    exportable = ExportableDetector(model).eval()

    @torch.no_grad()
    def pytorch_step():
        exportable(*inputs)

    return {'rcnn_det': pytorch_step, 'onnxruntime': lambda: session.run(None, feed)}


def torchvision_steps(batch, args, device, num_classes: int
                      ) -> tuple[Callable, Callable, torch.nn.Module]:
    """(train step, inference step, the model) of torchvision's Faster R-CNN R50-FPN on ``batch``."""
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    h, w = args.shape
    backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), trainable_layers=3)
    # min_size/max_size equal to the input shape: torchvision's transform does not rescale.
    model = FasterRCNN(backbone, num_classes=num_classes + 1, min_size=min(h, w),
                       max_size=max(h, w)).to(device)
    images, boxes, labels = batch
    images = [img.to(device).float() / 255 for img in images]
    targets = [dict(boxes=b.to(device), labels=l.to(device) + 1) for b, l in zip(boxes, labels)]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                momentum=0.9)

    def train_step():
        model.train()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer_step():
        model.eval()
        model(images)

    return train_step, infer_step, model


def peak_memory_mb(device: torch.device) -> float:
    """The most GPU memory tensors took on ``device``, or the process's peak resident set."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # kB on Linux


def config_num_classes(model_cfg) -> int:
    """The class count of a two-stage (roi_head.bbox_head), one-stage (bbox_head) or DETR-style
    (query_head) model config."""
    for path in (('roi_head', 'bbox_head'), ('bbox_head',), ('query_head',)):
        node = model_cfg
        for key in path:
            node = node.get(key) if node is not None else None
            if isinstance(node, (list, tuple)):   # Co-DETR's lists of auxiliary heads
                node = node[0] if node else None
        if node is not None and 'num_classes' in node:
            return node['num_classes']
    raise KeyError('benchmark: cannot find num_classes in model.roi_head.bbox_head, '
                   'model.bbox_head or model.query_head')


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    num_classes = config_num_classes(cfg.model)
    batch = random_batch(args.batch_size, tuple(args.shape), args.num_gts, num_classes)
    torch.manual_seed(0)
    if args.compare == 'onnxruntime':
        if device.type != 'cpu':
            raise SystemExit('benchmark: --compare onnxruntime runs on the CPU (--device cpu)')
        compare_inference(args, onnxruntime_steps(cfg, batch, args))
        return
    steps = {'rcnn_det': rcnn_det_steps(cfg, batch, args, device)}
    if args.compare == 'torchvision':
        torch.manual_seed(0)
        steps['torchvision'] = torchvision_steps(batch, args, device, num_classes)
    train = median_step_times({k: v[0] for k, v in steps.items()}, args.iters, args.warmup,
                              device)
    infer = median_step_times({k: v[1] for k, v in steps.items()}, args.iters, args.warmup,
                              device)
    rows = [(name, train[name], infer[name]) for name in steps]
    flops = {name: (step_flops(train_fn, model, False), step_flops(infer_fn, model, True))
             for name, (train_fn, infer_fn, model) in steps.items()}
    print(f'\n{args.config} on {device} ({torch.get_num_threads()} CPU threads), batch '
          f'{args.batch_size}, input {args.shape[0]}x{args.shape[1]}, median of {args.iters} '
          f'timed iterations after {args.warmup}')
    print(f'{"":12s} {"train it/s":>11s} {"train s/it":>11s} {"infer img/s":>12s} '
          f'{"train GFLOP/s":>14s} {"infer GFLOP/s":>14s}')
    for name, train_s, infer_s in rows:
        train_flops, infer_flops = flops[name]
        print(f'{name:12s} {1 / train_s:11.3f} {train_s:11.3f} {args.batch_size / infer_s:12.3f} '
              f'{train_flops / train_s / 1e9:14.2f} {infer_flops / infer_s / 1e9:14.2f}')
    print('GFLOP/s: the FLOPs torch.utils.flop_counter counts in one step (a multiply-add is '
          '2; forward and backward for training; ops without a formula, such as NMS, RoIAlign '
          'and grid_sample, uncounted) over its median time')
    print(f'peak memory: {peak_memory_mb(device):.0f} MB '
          f'({"allocated on the GPU" if device.type == "cuda" else "resident set of the process"}'
          f'{", both models" if len(rows) == 2 else ""})')
    if len(rows) == 2:
        (_, t_ours, i_ours), (_, t_tv, i_tv) = rows
        print(f'{"ratio":12s} {t_tv / t_ours:11.2f}x {"":11s} {i_tv / i_ours:11.2f}x   '
              '(rcnn_det speed / torchvision speed; > 1 means rcnn_det is faster)')


def step_flops(step: Callable[[], None], model: torch.nn.Module, inference: bool) -> int:
    """The FLOPs PyTorch's counter counts in one call of ``step`` of ``model`` (forward, and
    backward for a training step)."""
    from torch.utils.flop_counter import FlopCounterMode

    # The counter's module tracker fails under no_grad on a parameter passed to a submodule
    # (DINO's query embedding): nothing requires grad while an inference step is counted.
    frozen = [p for p in model.parameters() if p.requires_grad] if inference else []
    try:
        for p in frozen:
            p.requires_grad_(False)
        with FlopCounterMode(display=False) as counter:
            step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return counter.get_total_flops()


def compare_inference(args, steps: dict[str, Callable[[], None]]) -> None:
    """Print the images/s of each inference step and the ratio of the second to the first."""
    times = median_step_times(steps, args.iters, args.warmup, torch.device('cpu'))
    print(f'\n{args.config} exported computation on cpu ({torch.get_num_threads()} threads), '
          f'batch {args.batch_size}, input {args.shape[0]}x{args.shape[1]}, median of '
          f'{args.iters} timed iterations after {args.warmup}')
    print(f'{"":12s} {"infer img/s":>12s} {"s/batch":>9s}')
    for name, seconds in times.items():
        print(f'{name:12s} {args.batch_size / seconds:12.3f} {seconds:9.3f}')
    (first, t_first), (second, t_second) = times.items()
    print(f'{"ratio":12s} {t_first / t_second:11.2f}x   ({second} speed / {first} speed)')


if __name__ == '__main__':
    main()
