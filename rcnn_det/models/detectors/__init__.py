from .base import BaseDetector
from .co_detr import CoDETR
from .deformable_detr import DeformableDETR, convert_mmdet3_keys
from .dino import DINO
from .rpn import RPN
from .single_stage import ATSS, SingleStageDetector
from .two_stage import FasterRCNN, MaskRCNN, TwoStageDetector, split_two_stage_cfg

__all__ = ['ATSS', 'BaseDetector', 'CoDETR', 'DeformableDETR', 'DINO', 'FasterRCNN', 'MaskRCNN', 'RPN',
           'SingleStageDetector', 'TwoStageDetector', 'convert_mmdet3_keys',
           'split_two_stage_cfg']
