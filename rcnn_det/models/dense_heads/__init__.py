from .atss_head import ATSSHead, centerness_target
from .base_dense_head import BaseDenseHead
from .co_atss_head import CoATSSHead
from .co_deformable_detr_head import CoDeformDETRHead
from .deformable_detr_head import DeformableDETRHead
from .rpn_head import RPNHead

__all__ = ['ATSSHead', 'BaseDenseHead', 'CoATSSHead', 'CoDeformDETRHead', 'DeformableDETRHead',
           'RPNHead', 'centerness_target']
