"""Registered data transforms (rcnn_det scope). mmcv's others (RandomChoiceResize, Normalize, ...)
come from mmengine's root registry and build our Resize under scope 'rcnn_det'."""
from .augmentations import CopyPaste, FilterAnnotations
from .formatting import PackDetInputs, image_to_tensor
from .loading import (LoadAnnotations, LoadImageFromFile, LoadImageFromNDArray,
                      is_valid_segmentation, segmentation_to_mask)
from .transforms import (Pad, RandomCrop, RandomFlip, RandomResize, Resize, TorchvisionResize,
                         flip_masks, mask_tight_boxes, nearest_source_indices, pad_masks,
                         resize_masks)

__all__ = ['CopyPaste', 'FilterAnnotations', 'LoadAnnotations', 'LoadImageFromFile',
           'LoadImageFromNDArray', 'PackDetInputs', 'Pad', 'RandomCrop', 'RandomFlip',
           'RandomResize', 'Resize', 'TorchvisionResize', 'flip_masks', 'image_to_tensor',
           'is_valid_segmentation', 'mask_tight_boxes', 'nearest_source_indices', 'pad_masks',
           'resize_masks', 'segmentation_to_mask']
