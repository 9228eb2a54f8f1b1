from .anchor_targets import AnchorTargets, anchor_targets
from .assigners import (ATSSAssigner, AssignResult, BboxOverlaps2D, HungarianAssigner,
                        MaxIoUAssigner, atss_assign, hungarian_match, max_iou_assign)
from .coders import DeltaXYWHBBoxCoder, bbox2delta, delta2bbox
from .match_costs import BBoxL1Cost, BaseMatchCost, ClassificationCost, FocalLossCost, IoUCost
from .prior_generators import AnchorGenerator
from .samplers import PseudoSampler, RandomSampler, SamplingResult, sample_pos_neg

__all__ = ['ATSSAssigner', 'AnchorGenerator', 'AnchorTargets', 'AssignResult', 'BBoxL1Cost',
           'BaseMatchCost', 'BboxOverlaps2D', 'ClassificationCost', 'DeltaXYWHBBoxCoder',
           'FocalLossCost', 'HungarianAssigner', 'IoUCost', 'MaxIoUAssigner', 'PseudoSampler',
           'RandomSampler', 'SamplingResult', 'anchor_targets', 'atss_assign', 'bbox2delta',
           'delta2bbox', 'hungarian_match', 'max_iou_assign', 'sample_pos_neg']
