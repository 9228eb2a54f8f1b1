from .ms_deform_attn import MultiScaleDeformableAttention, multi_scale_deformable_attn_pytorch
from .positional_encoding import SinePositionalEncoding
from .roi_align import RoIAlign, RoIPool

__all__ = ['MultiScaleDeformableAttention', 'RoIAlign', 'RoIPool', 'SinePositionalEncoding',
           'multi_scale_deformable_attn_pytorch']
