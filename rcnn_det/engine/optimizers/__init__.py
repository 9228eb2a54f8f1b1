"""Optimizer wrappers that rcnn_det changes (mmengine's names, registered in rcnn_det's
OPTIM_WRAPPERS)."""
from .optim_wrapper import AmpOptimWrapper, OptimWrapper

__all__ = ['AmpOptimWrapper', 'OptimWrapper']
