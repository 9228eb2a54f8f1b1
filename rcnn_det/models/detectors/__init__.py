from .base import BaseDetector
from .two_stage import FasterRCNN, MaskRCNN, TwoStageDetector, split_two_stage_cfg

__all__ = ['BaseDetector', 'FasterRCNN', 'MaskRCNN', 'TwoStageDetector', 'split_two_stage_cfg']
