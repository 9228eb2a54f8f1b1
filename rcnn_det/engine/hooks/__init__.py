"""Hooks that mmengine does not already have, or that rcnn_det changes (registered in rcnn_det's
HOOKS under mmengine's names where they replace mmengine's)."""
from .checkpoint_hook import CheckpointHook, NonFiniteWeightsError
from .visualization_hook import DetVisualizationHook

__all__ = ['CheckpointHook', 'DetVisualizationHook', 'NonFiniteWeightsError']
