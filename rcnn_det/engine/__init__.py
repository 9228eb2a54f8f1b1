from .checkpoint import checkpoint_safe_globals, register_checkpoint_safe_globals
from .config_check import check_config, load_tool_config
from .distributed import destroy_distributed, init_cpu_distributed
from .hooks import *  # noqa: F401,F403

# Every user of rcnn_det's engine (the tools, a Runner built from an rcnn_det config) can then
# resume mmengine checkpoints with torch.load(weights_only=True).
register_checkpoint_safe_globals()

__all__ = ['check_config', 'load_tool_config', 'checkpoint_safe_globals', 'init_cpu_distributed',
           'destroy_distributed', 'register_checkpoint_safe_globals']
