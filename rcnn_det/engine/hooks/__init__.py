"""Hooks that mmengine does not already have (registered in rcnn_det's HOOKS)."""
from .visualization_hook import DetVisualizationHook

__all__ = ['DetVisualizationHook']
