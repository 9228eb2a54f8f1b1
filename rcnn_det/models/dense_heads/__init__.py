from .atss_head import ATSSHead, centerness_target
from .base_dense_head import BaseDenseHead
from .co_atss_head import CoATSSHead
from .co_deformable_detr_head import CoDeformDETRHead
from .co_dino_head import CoDINOHead
from .deformable_detr_head import DeformableDETRHead, DETRHeadBase
from .dino_head import DINOHead
from .rpn_head import RPNHead

__all__ = ['ATSSHead', 'BaseDenseHead', 'CoATSSHead', 'CoDeformDETRHead', 'CoDINOHead', 'DeformableDETRHead',
           'DETRHeadBase', 'DINOHead', 'RPNHead', 'centerness_target']
