from .atss_head import ATSSHead, centerness_target
from .base_dense_head import BaseDenseHead
from .deformable_detr_head import DeformableDETRHead
from .rpn_head import RPNHead

__all__ = ['ATSSHead', 'BaseDenseHead', 'DeformableDETRHead', 'RPNHead', 'centerness_target']
