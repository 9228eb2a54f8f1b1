from .roi_align import RoIAlign, RoIPool

__all__ = ['RoIAlign', 'RoIPool']
