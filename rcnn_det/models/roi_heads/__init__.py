from .base_roi_head import BaseRoIHead
from .bbox_heads import RoITargets, Shared2FCBBoxHead
from .roi_extractors import SingleRoIExtractor
from .standard_roi_head import StandardRoIHead

__all__ = ['BaseRoIHead', 'RoITargets', 'Shared2FCBBoxHead', 'SingleRoIExtractor',
           'StandardRoIHead']
