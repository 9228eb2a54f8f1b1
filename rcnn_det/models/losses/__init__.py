from .cross_entropy_loss import (CrossEntropyLoss, binary_cross_entropy, mask_cross_entropy,
                                 softmax_cross_entropy)
from .focal_loss import FocalLoss, sigmoid_focal_loss
from .gfocal_loss import QualityFocalLoss, quality_focal_loss
from .iou_loss import GIoULoss, IoULoss, giou_loss, iou_loss
from .reduction import weight_reduce_loss
from .smooth_l1_loss import L1Loss, SmoothL1Loss, smooth_l1_loss

__all__ = ['CrossEntropyLoss', 'FocalLoss', 'GIoULoss', 'IoULoss', 'L1Loss', 'QualityFocalLoss',
           'SmoothL1Loss', 'binary_cross_entropy', 'giou_loss', 'iou_loss', 'mask_cross_entropy',
           'quality_focal_loss', 'sigmoid_focal_loss', 'smooth_l1_loss', 'softmax_cross_entropy',
           'weight_reduce_loss']
