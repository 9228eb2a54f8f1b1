from .convfc_bbox_head import RoITargets, Shared2FCBBoxHead, multiclass_nms

__all__ = ['RoITargets', 'Shared2FCBBoxHead', 'multiclass_nms']
