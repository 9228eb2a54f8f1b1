"""Visualization: every module here that registers a visualizer or vis backend is imported, so
that the registry's ``locations`` (``rcnn_det.visualization``) find them."""
from .local_visualizer import DetLocalVisualizer, class_palette, make_grid

__all__ = ['DetLocalVisualizer', 'class_palette', 'make_grid']
