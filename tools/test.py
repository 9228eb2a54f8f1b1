"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT [options]``."""
import argparse
import copy
import os
import os.path as osp

from mmengine.config import Config, ConfigDict, DictAction
from mmengine.registry import RUNNERS

# main() calls register_checkpoint_safe_globals() before any checkpoint is loaded: mmengine's
# then load with weights_only=True (rcnn_det/engine/checkpoint.py), as the Runner's load_from
# needs.
from rcnn_det.datasets.transforms.formatting import DEFAULT_META_KEYS
from rcnn_det.engine import (DetRunner, destroy_distributed, follow_launcher,
                             init_cpu_distributed, load_tool_config,
                             register_checkpoint_safe_globals)
from rcnn_det.models.test_time_augs.det_tta import DEFAULT_TTA_CFG


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument('--out', type=str,
                        help='dump predictions to a pickle file (.pkl) for offline evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir',
                        help='directory (inside the work dir) where painted images are saved')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds between --show images')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation: the config's tta_model and tta_pipeline "
                             '(defaults: a horizontal flip, boxes merged by NMS)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. test_evaluator.classwise=True')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def trigger_visualization_hook(cfg: Config, args: argparse.Namespace) -> None:
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise KeyError(f'{args.config}: --show / --show-dir need '
                       "default_hooks.visualization=dict(type='DetVisualizationHook')")
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        hook['test_out_dir'] = args.show_dir


def use_tta(cfg: Config) -> None:
    """mmdetection's ``--tta``: the model inside ``tta_model`` (default ``DetTTAModel``,
    NMS 0.5, 100 per image) and the test dataset's pipeline replaced by ``tta_pipeline``
    (default: the test pipeline with its packing step in a ``TestTimeAug`` of a horizontal
    flip and no flip)."""
    dataset = cfg.test_dataloader.dataset
    while 'pipeline' not in dataset and 'dataset' in dataset:   # under dataset wrappers
        dataset = dataset.dataset
    if 'tta_model' not in cfg:
        print('tools/test.py: the config has no tta_model; using '
              f'DetTTAModel(tta_cfg={DEFAULT_TTA_CFG})')
        cfg.tta_model = dict(type='DetTTAModel', tta_cfg=DEFAULT_TTA_CFG)
    if 'tta_pipeline' not in cfg:
        print('tools/test.py: the config has no tta_pipeline; using the test pipeline with '
              'and without a horizontal flip')
        pipeline = copy.deepcopy(dataset.pipeline)
        pack = dict(pipeline[-1])
        pack['meta_keys'] = tuple(dict.fromkeys(
            (*pack.get('meta_keys', DEFAULT_META_KEYS), 'flip', 'flip_direction')))
        pipeline[-1] = dict(type='TestTimeAug', transforms=[
            [dict(type='RandomFlip', prob=1.0), dict(type='RandomFlip', prob=0.0)], [pack]])
        cfg.tta_pipeline = pipeline
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    dataset.pipeline = cfg.tta_pipeline


def main() -> None:
    watch = follow_launcher()   # a rank of tools/dist_*.sh ends when its launcher dies
    register_checkpoint_safe_globals()
    args = parse_args()
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')
    cfg = load_tool_config(args.config, args.cfg_options, args.launcher, args.work_dir,
                           training=False)
    cfg.load_from = args.checkpoint
    if args.tta:
        use_tta(cfg)
    if args.show or args.show_dir:
        trigger_visualization_hook(cfg, args)
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must be a .pkl file, got {args.out}')
        cfg.test_evaluator = [cfg.test_evaluator,
                              dict(type='DumpDetResults', out_file_path=args.out)]
    init_cpu_distributed(cfg)
    try:
        # DetRunner.test refuses a checkpoint that does not fit the model, naming the file and
        # the keys and shapes that differ (mmengine's would evaluate a half-loaded model)
        runner = DetRunner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
        runner.test()
    finally:
        destroy_distributed()
        if watch is not None:
            watch.stop()


if __name__ == '__main__':
    main()
