from .match_cost import BBoxL1Cost, BaseMatchCost, ClassificationCost, FocalLossCost, IoUCost

__all__ = ['BBoxL1Cost', 'BaseMatchCost', 'ClassificationCost', 'FocalLossCost', 'IoUCost']
