from .anchor_targets import AnchorTargets, anchor_targets
from .assigners import (ATSSAssigner, AssignResult, BboxOverlaps2D, MaxIoUAssigner, atss_assign,
                        max_iou_assign)
from .coders import DeltaXYWHBBoxCoder, bbox2delta, delta2bbox
from .prior_generators import AnchorGenerator
from .samplers import PseudoSampler, RandomSampler, SamplingResult, sample_pos_neg

__all__ = ['ATSSAssigner', 'AnchorGenerator', 'AnchorTargets', 'AssignResult', 'BboxOverlaps2D',
           'DeltaXYWHBBoxCoder', 'MaxIoUAssigner', 'PseudoSampler', 'RandomSampler', 'SamplingResult',
           'anchor_targets', 'atss_assign', 'bbox2delta', 'delta2bbox', 'max_iou_assign',
           'sample_pos_neg']
