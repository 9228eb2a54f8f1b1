from .assign_result import AssignResult
from .atss_assigner import ATSSAssigner, atss_assign
from .iou2d_calculator import BboxOverlaps2D
from .max_iou_assigner import MaxIoUAssigner, max_iou_assign

__all__ = ['ATSSAssigner', 'AssignResult', 'BboxOverlaps2D', 'MaxIoUAssigner', 'atss_assign',
           'max_iou_assign']
