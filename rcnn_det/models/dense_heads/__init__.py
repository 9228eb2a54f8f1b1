from .base_dense_head import BaseDenseHead
from .rpn_head import RPNHead

__all__ = ['BaseDenseHead', 'RPNHead']
