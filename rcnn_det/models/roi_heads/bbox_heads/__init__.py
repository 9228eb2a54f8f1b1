from .convfc_bbox_head import RoITargets, Shared2FCBBoxHead

__all__ = ['RoITargets', 'Shared2FCBBoxHead']
