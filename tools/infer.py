"""Predict on your own images: ``python tools/infer.py CONFIG CHECKPOINT INPUT [options]``.

CHECKPOINT is a checkpoint of tools/train.py or an ONNX file of tools/deployment/export_onnx.py
(run with onnxruntime; same outputs).

INPUT is an image file, a folder (the images directly in it, sorted by name) or a glob pattern
(quote it so that the shell does not expand it: ``'photos/**/*.jpg'``). Writes

    OUT_DIR/vis/<image name>.png   the image with the predicted masks, boxes and 'class: score'
    OUT_DIR/predictions.json       [{"file_name": INPUT's path of the image, "height": H,
                                     "width": W, "instances": [{"bbox": [x1, y1, x2, y2],
                                     "score": s, "label": l, "class_name": name or null,
                                     "mask": COCO RLE (Mask R-CNN only)}, ...]}, ...]

Both keep the predictions with a score above ``--score-thr``; boxes are pixels of the original
image. Image names are relative to the folder the images share, so a glob over several folders
keeps them apart.
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys
import uuid
import warnings
from collections import Counter

import mmcv
from mmengine.config import DictAction
from mmengine.registry import DefaultScope
from mmengine.utils import ProgressBar, mkdir_or_exist

from rcnn_det.apis import inference_detector, init_detector
from rcnn_det.engine import CheckpointError
from rcnn_det.evaluation.metrics.coco_metric import encode_masks
from rcnn_det.registry import VISUALIZERS

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Draw and save the predictions of a detector on image files')
    parser.add_argument('config', help='config file of the model')
    parser.add_argument('checkpoint', help='checkpoint file (tools/train.py writes them), or a '
                                           '.onnx file of tools/deployment/export_onnx.py (run '
                                           'with onnxruntime)')
    parser.add_argument('input', help="an image file, a folder of images or a glob pattern "
                                      "('imgs/*.jpg'; quote it)")
    parser.add_argument('--out-dir', default='outputs',
                        help='where vis/*.png and predictions.json are written')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='predictions with a score at or below it are neither drawn nor saved')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument('--batch-size', type=int,
                        help="images per forward pass (default: the config's "
                             'test_dataloader.batch_size)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. model.test_cfg.rcnn.score_thr=0.1')
    args = parser.parse_args()
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    return args


def is_image_file(path: str) -> bool:
    return osp.isfile(path) and path.lower().endswith(IMG_EXTENSIONS)


def list_images(source: str) -> list[str]:
    """The image files ``source`` names: itself (a file, whatever its extension), the image
    files directly in it (a folder), or those a glob pattern matches (``**`` recurses); sorted."""
    if osp.isfile(source):
        return [source]
    extensions = ', '.join(IMG_EXTENSIONS)
    if osp.isdir(source):
        files = sorted(osp.join(source, name) for name in os.listdir(source)
                       if is_image_file(osp.join(source, name)))
        if not files:
            raise FileNotFoundError(f'no image files ({extensions}) in folder {source}')
        return files
    if glob.has_magic(source):
        files = sorted(path for path in glob.glob(source, recursive=True) if is_image_file(path))
        if not files:
            raise FileNotFoundError(f"no image file ({extensions}) matches the pattern '{source}'")
        return files
    raise FileNotFoundError(f'input not found: {source} is not an image file, a folder or a '
                            'glob pattern')


def vis_file_names(files: list[str]) -> list[str]:
    """'<path relative to the folder the files share, extension dropped>.png' for each file;
    files whose names would collide (a.jpg, a.png) keep their extension: 'a.jpg.png'."""
    base = osp.commonpath([osp.dirname(osp.abspath(f)) for f in files])
    relative = [osp.relpath(osp.abspath(f), base) for f in files]
    stems = [osp.splitext(r)[0] for r in relative]
    counts = Counter(stems)
    return [(stem if counts[stem] == 1 else rel) + '.png' for stem, rel in zip(stems, relative)]


def prediction_record(file_name: str, sample, classes, score_thr: float) -> dict:
    """One image's entry of predictions.json (see the module docstring)."""
    pred = sample.pred_instances.cpu()
    pred = pred[pred.scores > score_thr]
    masks = encode_masks(pred.masks) if 'masks' in pred else None
    instances = []
    for i, (bbox, score, label) in enumerate(zip(pred.bboxes.tolist(), pred.scores.tolist(),
                                                 pred.labels.tolist())):
        instance = dict(bbox=bbox, score=score, label=label,
                        class_name=classes[label] if classes and label < len(classes) else None)
        if masks is not None:
            instance['mask'] = masks[i]
        instances.append(instance)
    height, width = sample.ori_shape[:2]
    return dict(file_name=file_name, height=int(height), width=int(width), instances=instances)


def build_visualizer(model):
    """The config's visualizer (its colours and line widths), writing only where it is told."""
    vis_cfg = dict(model.cfg.get('visualizer') or dict(type='DetLocalVisualizer'))
    # mmengine keeps one visualizer per name and hands back an existing one with its old settings
    vis_cfg.update(name=f'infer-{uuid.uuid4().hex}', vis_backends=None, save_dir=None)
    with DefaultScope.overwrite_default_scope(model.cfg.get('default_scope') or 'rcnn_det'):
        visualizer = VISUALIZERS.build(vis_cfg)
    visualizer.dataset_meta = model.dataset_meta
    return visualizer


def main() -> None:
    args = parse_args()
    # mmengine warns about any box, label or mask outline that reaches x = width or y = height,
    # which every box clipped to the image does: once per drawing, nothing is wrong.
    warnings.filterwarnings('ignore', message=r'Warning: The \w+ is out of bounds',
                            category=UserWarning)
    try:
        files = list_images(args.input)
    except FileNotFoundError as e:
        sys.exit(f'infer.py: error: {e}')
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        sys.exit(f'infer.py: error: checkpoint not found: {args.checkpoint}')
    try:  # a checkpoint that is damaged, refused or of another model: named, with what differs
        model = init_detector(args.config, args.checkpoint, device=args.device,
                              cfg_options=args.cfg_options)
    except CheckpointError as e:
        sys.exit(f'infer.py: error: {e}')
    visualizer = build_visualizer(model)
    classes = model.dataset_meta.get('classes')
    # an exported graph has its batch size built in (OnnxDetector.batch_size)
    batch_size = (args.batch_size or getattr(model, 'batch_size', None)
                  or (model.cfg.get('test_dataloader') or {}).get('batch_size') or 1)
    vis_dir = osp.join(args.out_dir, 'vis')
    vis_files = [osp.join(vis_dir, name) for name in vis_file_names(files)]
    records = []
    progress = ProgressBar(len(files))
    for start in range(0, len(files), batch_size):
        batch = files[start:start + batch_size]
        try:
            samples = inference_detector(model, batch, batch_size=batch_size)
        except OSError as e:  # the loader names the file it could not read
            sys.exit(f'\ninfer.py: error: {e}')
        for path, vis_file, sample in zip(batch, vis_files[start:], samples):
            mkdir_or_exist(osp.dirname(vis_file))
            visualizer.add_datasample(osp.basename(path), mmcv.imread(path, channel_order='rgb'),
                                      sample, draw_gt=False, pred_score_thr=args.score_thr,
                                      out_file=vis_file)
            records.append(prediction_record(path, sample, classes, args.score_thr))
            progress.update()
    json_file = osp.join(args.out_dir, 'predictions.json')
    with open(json_file, 'w', encoding='utf-8') as f:
        json.dump(records, f)
    num_found = sum(len(r['instances']) for r in records)
    print(f'\n{len(files)} image(s), {num_found} prediction(s) with score > {args.score_thr}: '
          f'drawings in {vis_dir}, predictions in {json_file}')


if __name__ == '__main__':
    main()
