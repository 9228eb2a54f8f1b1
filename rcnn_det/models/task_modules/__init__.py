from .anchor_targets import AnchorTargets, anchor_targets
from .assigners import AssignResult, BboxOverlaps2D, MaxIoUAssigner, max_iou_assign
from .coders import DeltaXYWHBBoxCoder, bbox2delta, delta2bbox
from .prior_generators import AnchorGenerator
from .samplers import RandomSampler, SamplingResult, sample_pos_neg

__all__ = ['AnchorGenerator', 'AnchorTargets', 'AssignResult', 'BboxOverlaps2D',
           'DeltaXYWHBBoxCoder', 'MaxIoUAssigner', 'RandomSampler', 'SamplingResult',
           'anchor_targets', 'bbox2delta', 'delta2bbox', 'max_iou_assign', 'sample_pos_neg']
