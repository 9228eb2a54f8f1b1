from .co_deformable_transformer import CoDeformableDetrTransformer
from .deformable_transformer import (DeformableDetrTransformer, DeformableDetrTransformerDecoder,
                                     encoder_reference_points, inverse_sigmoid,
                                     proposal_pos_embed, valid_ratios)
from .ms_deform_attn import MultiScaleDeformableAttention, multi_scale_deformable_attn_pytorch
from .positional_encoding import SinePositionalEncoding
from .roi_align import RoIAlign, RoIPool
from .transformer import (FFN, BaseTransformerLayer, DetrTransformerDecoderLayer,
                          DetrTransformerEncoder, MultiheadAttention)

__all__ = ['FFN', 'BaseTransformerLayer', 'CoDeformableDetrTransformer',
           'DeformableDetrTransformer',
           'DeformableDetrTransformerDecoder', 'DetrTransformerDecoderLayer',
           'DetrTransformerEncoder',
           'MultiScaleDeformableAttention', 'MultiheadAttention', 'RoIAlign', 'RoIPool',
           'SinePositionalEncoding', 'encoder_reference_points', 'inverse_sigmoid',
           'multi_scale_deformable_attn_pytorch', 'proposal_pos_embed', 'valid_ratios']
