"""Look at what the training pipeline feeds the model:
``python tools/analysis_tools/browse_dataset.py CONFIG --output-dir DIR [--show-number N]``.

Builds the config's training dataset (under its dataset wrappers) with its pipeline, and draws
the first N samples as the model receives them (after resizing, flipping, cropping, mosaic or
copy-paste): the image with its ground-truth boxes, class names and masks, one PNG per sample
named after its image, ``<image name>_<index>.png``. As mmdetection's tool, with ``--show``
to open each drawing in a window as well.
"""
import argparse
import os.path as osp
import sys
import uuid

from mmengine.config import Config, DictAction
from mmengine.registry import DefaultScope
from mmengine.utils import ProgressBar, mkdir_or_exist

from rcnn_det.registry import DATASETS, VISUALIZERS


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Draw the training pipeline\'s output')
    parser.add_argument('config', help='config file')
    parser.add_argument('--output-dir', required=True, help='where the PNGs are written')
    parser.add_argument('--show-number', type=int, default=10,
                        help='how many samples to draw (default 10; at most the dataset size)')
    parser.add_argument('--show', action='store_true', help='also show each drawing')
    parser.add_argument('--show-interval', type=float, default=2,
                        help='seconds each drawing is shown with --show')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    args = parser.parse_args()
    if args.show_number < 1:
        parser.error(f'--show-number must be >= 1, got {args.show_number}')
    return args


def main() -> None:
    args = parse_args()
    if not osp.isfile(args.config):
        sys.exit(f'browse_dataset.py: error: config file not found: {args.config}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope') or 'rcnn_det'):
        dataset = DATASETS.build(cfg.train_dataloader.dataset)
        vis_cfg = dict(cfg.get('visualizer') or dict(type='DetLocalVisualizer'))
        # a fresh name: mmengine hands back an existing visualizer with its old settings
        vis_cfg.update(name=f'browse-{uuid.uuid4().hex}', vis_backends=None, save_dir=None)
        visualizer = VISUALIZERS.build(vis_cfg)
    visualizer.dataset_meta = dataset.metainfo
    mkdir_or_exist(args.output_dir)
    count = min(args.show_number, len(dataset))
    progress = ProgressBar(count)
    for index in range(count):
        item = dataset[index]
        sample = item['data_samples']
        image = item['inputs'].permute(1, 2, 0).numpy()     # the pipeline's (H, W, 3) BGR
        name = osp.splitext(osp.basename(sample.metainfo.get('img_path') or f'{index}'))[0]
        out_file = osp.join(args.output_dir, f'{name}_{index}.png')
        visualizer.add_datasample(name, image[..., ::-1].copy(), sample, draw_pred=False,
                                  show=args.show, wait_time=args.show_interval,
                                  out_file=out_file)
        progress.update()
    print(f'\n{count} sample(s) of {len(dataset)} drawn into {args.output_dir}')


if __name__ == '__main__':
    main()
