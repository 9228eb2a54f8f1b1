from .base import BaseDetector
from .single_stage import ATSS, SingleStageDetector
from .two_stage import FasterRCNN, MaskRCNN, TwoStageDetector, split_two_stage_cfg

__all__ = ['ATSS', 'BaseDetector', 'FasterRCNN', 'MaskRCNN', 'SingleStageDetector',
           'TwoStageDetector', 'split_two_stage_cfg']
