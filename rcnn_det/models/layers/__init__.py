from .co_deformable_transformer import CoDeformableDetrTransformer, CoDinoTransformer
from .deformable_transformer import (DeformableDetrTransformer, DeformableDetrTransformerDecoder,
                                     encoder_reference_points, inverse_sigmoid,
                                     proposal_pos_embed, valid_ratios)
from .denoising import (CdnQueryGenerator, DenoisingQueries, build_dn_generator, dn_attn_mask,
                        noisy_dn_boxes, noisy_dn_labels)
from .ema import ExpMomentumEMA
from .dino_transformer import (DeformableDetrTransformerEncoder, DinoTransformerDecoder,
                               coordinate_sine_embed, select_topk_proposals)
from .ms_deform_attn import MultiScaleDeformableAttention, multi_scale_deformable_attn_pytorch
from .positional_encoding import SinePositionalEncoding
from .roi_align import RoIAlign, RoIPool
from .transformer import (FFN, BaseTransformerLayer, DetrTransformerDecoderLayer,
                          DetrTransformerEncoder, MultiheadAttention)

__all__ = ['FFN', 'BaseTransformerLayer', 'CdnQueryGenerator', 'CoDeformableDetrTransformer',
           'CoDinoTransformer',
           'DeformableDetrTransformer',
           'DeformableDetrTransformerDecoder', 'DeformableDetrTransformerEncoder',
           'DenoisingQueries', 'DinoTransformerDecoder', 'ExpMomentumEMA', 'DetrTransformerDecoderLayer',
           'DetrTransformerEncoder',
           'MultiScaleDeformableAttention', 'MultiheadAttention', 'RoIAlign', 'RoIPool',
           'SinePositionalEncoding', 'build_dn_generator', 'coordinate_sine_embed', 'dn_attn_mask',
           'encoder_reference_points', 'inverse_sigmoid', 'noisy_dn_boxes', 'noisy_dn_labels',
           'multi_scale_deformable_attn_pytorch', 'proposal_pos_embed', 'select_topk_proposals', 'valid_ratios']
