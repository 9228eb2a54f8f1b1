from .atss_head import ATSSHead, centerness_target
from .base_dense_head import BaseDenseHead
from .rpn_head import RPNHead

__all__ = ['ATSSHead', 'BaseDenseHead', 'RPNHead', 'centerness_target']
