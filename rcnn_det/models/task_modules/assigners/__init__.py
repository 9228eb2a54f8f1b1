from .assign_result import AssignResult
from .atss_assigner import ATSSAssigner, atss_assign
from .hungarian_assigner import HungarianAssigner, hungarian_match
from .iou2d_calculator import BboxOverlaps2D
from .max_iou_assigner import MaxIoUAssigner, max_iou_assign

__all__ = ['ATSSAssigner', 'AssignResult', 'BboxOverlaps2D', 'HungarianAssigner', 'MaxIoUAssigner',
           'atss_assign', 'hungarian_match', 'max_iou_assign']
