from .base_roi_head import BaseRoIHead
from .bbox_heads import RoITargets, Shared2FCBBoxHead
from .co_standard_roi_head import CoStandardRoIHead
from .mask_heads import FCNMaskHead, MaskTargetRecipe
from .roi_extractors import SingleRoIExtractor
from .standard_roi_head import StandardRoIHead

__all__ = ['BaseRoIHead', 'CoStandardRoIHead', 'FCNMaskHead', 'MaskTargetRecipe', 'RoITargets',
           'Shared2FCBBoxHead', 'SingleRoIExtractor', 'StandardRoIHead']
