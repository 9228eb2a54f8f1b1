"""Datasets, samplers and transforms. Importing this package registers all of them (the
registry's ``locations`` point here)."""
from . import transforms  # noqa: F401  (registers the transforms)
from .coco import CocoDataset, distinct_palette, read_coco_json
from .dataset_wrappers import (ClassBalancedDataset, ConcatDataset, MultiImageMixDataset,
                               RepeatDataset)
from .samplers import AspectRatioBatchSampler
from .shapes import SHAPE_CLASSES, ShapesDataset, generate_shapes_dataset, shapes_dataset_ready
from .voc import VOCDataset

__all__ = ['AspectRatioBatchSampler', 'ClassBalancedDataset', 'CocoDataset', 'ConcatDataset',
           'MultiImageMixDataset', 'RepeatDataset', 'SHAPE_CLASSES', 'ShapesDataset',
           'distinct_palette', 'generate_shapes_dataset', 'read_coco_json',
           'shapes_dataset_ready', 'VOCDataset']
