from .ms_deform_attn import MultiScaleDeformableAttention, multi_scale_deformable_attn_pytorch
from .roi_align import RoIAlign, RoIPool

__all__ = ['MultiScaleDeformableAttention', 'RoIAlign', 'RoIPool',
           'multi_scale_deformable_attn_pytorch']
