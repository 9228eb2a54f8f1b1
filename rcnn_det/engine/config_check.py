"""Checks of a whole training config before the Runner sees it.

mmengine silently ignores a top-level key it does not know (``train_dataloder = ...`` trains
with no data loader and fails much later); here such a key fails at once, naming the closest
known key.
"""
from __future__ import annotations

import difflib
import os.path as osp

from mmengine.config import Config

# Keys mmengine's Runner.from_cfg reads, plus the ones mmdetection configs carry for tools.
RUNNER_KEYS = {
    'model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'train_cfg',
    'val_cfg', 'test_cfg', 'auto_scale_lr', 'optim_wrapper', 'param_scheduler', 'val_evaluator',
    'test_evaluator', 'default_hooks', 'custom_hooks', 'data_preprocessor', 'load_from',
    'resume', 'launcher', 'env_cfg', 'log_processor', 'log_level', 'visualizer',
    'default_scope', 'randomness', 'experiment_name', 'cfg', 'runner_type', 'vis_backends',
    'tta_model', 'tta_pipeline', 'compile', 'strategy',
}
REQUIRED_FOR_TRAINING = ('model', 'train_dataloader', 'train_cfg', 'optim_wrapper')


def check_config(cfg: Config, filename: str, training: bool = True) -> None:
    """Raise a KeyError naming ``filename`` for a misspelled or missing top-level key.

    Top-level names that configs use as variables (``data_root``, ``train_pipeline``, ...) are
    allowed: a key is reported only when it is not a runner key but nearly equal to one
    (``train_dataloder``, ``optim_wraper``).
    """
    for key in cfg.keys():
        if key in RUNNER_KEYS or key.endswith('_pipeline'):
            continue
        close = difflib.get_close_matches(key, sorted(RUNNER_KEYS), n=1, cutoff=0.9)
        if close:
            raise KeyError(f"{filename}: unknown top-level key '{key}'; did you mean "
                           f"'{close[0]}'?")
    required = REQUIRED_FOR_TRAINING if training else ('model', 'test_dataloader',
                                                        'test_evaluator', 'test_cfg')
    missing = [key for key in required if cfg.get(key) is None]
    if missing:
        raise KeyError(f'{filename}: missing {", ".join(repr(m) for m in missing)} '
                       f'(needed to {"train" if training else "test"}; inherit them from '
                       "configs/_base_ with _base_ = [...])")


def load_tool_config(path: str, cfg_options: dict | None, launcher: str,
                     work_dir: str | None, training: bool) -> Config:
    """What tools/train.py and tools/test.py do first: read ``path``, apply ``--cfg-options``,
    check it, and choose the work dir (``--work-dir``, else the config's, else
    ``./work_dirs/<config name>``)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    check_config(cfg, path, training=training)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg
