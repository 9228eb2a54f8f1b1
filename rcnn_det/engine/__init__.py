from .checkpoint import (CheckpointError, CheckpointMismatchError, CheckpointRefusedError,
                         checkpoint_safe_globals, load_checkpoint_file, load_state_dict_strict,
                         register_checkpoint_safe_globals)
from .config_check import check_config, load_tool_config
from .distributed import destroy_distributed, follow_launcher, init_cpu_distributed
from .hooks import *  # noqa: F401,F403
from .loops import EpochBasedTrainLoop, IterBasedTrainLoop, NonFiniteTrainingError
from .optimizers import AmpOptimWrapper, OptimWrapper
from .runner import DetRunner, find_resume_checkpoint

__all__ = ['check_config', 'load_tool_config', 'checkpoint_safe_globals', 'init_cpu_distributed',
           'destroy_distributed', 'follow_launcher', 'register_checkpoint_safe_globals',
           'CheckpointError', 'CheckpointMismatchError', 'CheckpointRefusedError',
           'load_checkpoint_file', 'load_state_dict_strict',
           'DetRunner', 'find_resume_checkpoint', 'EpochBasedTrainLoop', 'IterBasedTrainLoop',
           'NonFiniteTrainingError', 'AmpOptimWrapper', 'OptimWrapper']
