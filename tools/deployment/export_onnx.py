"""Export a trained detector to ONNX, post-processing included:
``python tools/deployment/export_onnx.py CONFIG CHECKPOINT --out model.onnx [options]``.

The graph takes the preprocessed batch (``images`` (B, 3, H, W) float32, ``img_shapes`` (B, 2)
int64, ``scale_factors`` (B, 2) float32) and returns ``boxes`` (N, 4) in original image pixels,
``scores``, ``labels``, ``batch_ids`` (and ``masks`` (N, S, S) for Mask R-CNN); see
docs/deployment.md. ``tools/infer.py CONFIG model.onnx IMAGES`` runs it with onnxruntime.
Needs the ``deploy`` extra: ``pip install -e ".[deploy]"``.
"""
import argparse
import math
import os.path as osp
import sys
import time

from mmengine.config import DictAction

from rcnn_det.apis import init_detector
from rcnn_det.apis.inference import inference_pipeline
from rcnn_det.deployment import export_onnx
from rcnn_det.deployment.onnx_export import DEFAULT_OPSET
from rcnn_det.engine import CheckpointError


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a detector to ONNX')
    parser.add_argument('config', help='config file of the model')
    parser.add_argument('checkpoint', help='checkpoint file (tools/train.py writes them)')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--input-shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='padded input size traced with (default: the test pipeline\'s '
                             'resize scale, rounded up to the size divisor)')
    parser.add_argument('--dynamic', action='store_true',
                        help='height and width of the input vary at run time')
    parser.add_argument('--batch-size', type=int, default=1,
                        help='images per run (fixed in the graph)')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        help=f'ONNX opset (>= 16; default {DEFAULT_OPSET})')
    parser.add_argument('--deform-attn', choices=['grid_sample', 'gather'], default='grid_sample',
                        help="DETR-style models: sample with ONNX GridSample, or with Gather "
                             "(for TensorRT versions whose GridSample is wrong)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. model.test_cfg.rcnn.score_thr=0.1')
    args = parser.parse_args()
    if not args.out.endswith('.onnx'):
        parser.error(f'--out must be a .onnx file, got {args.out}')
    if args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    return args


def default_input_shape(model) -> tuple[int, int]:
    """The largest input the test pipeline makes: its resize scale (mmdet's (long, short)
    keeps the ratio within it), rounded up to the preprocessor's ``pad_size_divisor``."""
    scale = None
    for transform in inference_pipeline(model.cfg).transforms:
        scale = getattr(transform, 'scale', None) or scale
    if scale is None:
        raise ValueError('export_onnx.py: the test pipeline has no Resize with a scale; give '
                         '--input-shape H W')
    width, height = scale if isinstance(scale, (tuple, list)) else (scale, scale)
    divisor = model.data_preprocessor.pad_size_divisor or 1
    return (math.ceil(min(height, width) / divisor) * divisor,
            math.ceil(max(height, width) / divisor) * divisor)


def main() -> None:
    args = parse_args()
    if not osp.isfile(args.checkpoint):
        sys.exit(f'export_onnx.py: error: checkpoint not found: {args.checkpoint}')
    try:
        model = init_detector(args.config, args.checkpoint, cfg_options=args.cfg_options)
    except CheckpointError as e:
        sys.exit(f'export_onnx.py: error: {e}')
    shape = tuple(args.input_shape) if args.input_shape else default_input_shape(model)
    print(f'exporting {type(model).__name__} at input {shape[0]} x {shape[1]}, batch '
          f'{args.batch_size}, {"dynamic" if args.dynamic else "static"} shape, opset '
          f'{args.opset} ...')
    start = time.perf_counter()
    meta = export_onnx(model, args.out, shape, batch_size=args.batch_size,
                       dynamic=args.dynamic, opset=args.opset, dataset_meta=model.dataset_meta,
                       deform_attn=args.deform_attn)
    print(f'wrote {args.out} ({osp.getsize(args.out) / 2**20:.1f} MiB) in '
          f'{time.perf_counter() - start:.1f} s: inputs {", ".join(meta["inputs"])}; outputs '
          f'{", ".join(meta["outputs"])}')


if __name__ == '__main__':
    main()
