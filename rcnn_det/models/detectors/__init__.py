from .base import BaseDetector
from .two_stage import FasterRCNN, TwoStageDetector, split_two_stage_cfg

__all__ = ['BaseDetector', 'FasterRCNN', 'TwoStageDetector', 'split_two_stage_cfg']
