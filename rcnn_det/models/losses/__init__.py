from .cross_entropy_loss import (CrossEntropyLoss, binary_cross_entropy, mask_cross_entropy,
                                 softmax_cross_entropy)
from .reduction import weight_reduce_loss
from .smooth_l1_loss import L1Loss, SmoothL1Loss, smooth_l1_loss

__all__ = ['CrossEntropyLoss', 'L1Loss', 'SmoothL1Loss', 'binary_cross_entropy',
           'mask_cross_entropy', 'smooth_l1_loss', 'softmax_cross_entropy', 'weight_reduce_loss']
