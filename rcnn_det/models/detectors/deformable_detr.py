"""``DeformableDETR``: backbone -> neck -> deformable transformer head (Zhu et al., 2021).

The config is mmdetection 3.x's (``encoder``, ``decoder``, ``positional_encoding``,
``num_queries``, ``with_box_refine``, ``as_two_stage`` at the detector level); the modules keep
the official names of mmdetection 2.x and Co-DETR (``bbox_head.transformer.encoder.layers.{i}.
attentions.0``, ...), so those checkpoints load as they are, and an mmdetection 3.x checkpoint
(``encoder.layers.{i}.self_attn``, ``memory_trans_fc``, ...) is renamed on loading by
``convert_mmdet3_keys``.
"""
from __future__ import annotations

import copy
import re

from torch import Tensor

from rcnn_det.registry import MODELS
from rcnn_det.structures import SampleList

from .single_stage import SingleStageDetector

ENCODER_ORDER = ('self_attn', 'norm', 'ffn', 'norm')
DECODER_ORDER = ('self_attn', 'norm', 'cross_attn', 'norm', 'ffn', 'norm')

# mmdetection 3.x name -> the official (2.x / Co-DETR) name, as regular expressions.
MMDET3_KEY_MAP = [
    (r'^(encoder|decoder)\.layers\.(\d+)\.self_attn\.',
     r'bbox_head.transformer.\1.layers.\2.attentions.0.'),
    (r'^decoder\.layers\.(\d+)\.cross_attn\.',
     r'bbox_head.transformer.decoder.layers.\1.attentions.1.'),
    (r'^(encoder|decoder)\.layers\.(\d+)\.ffn\.', r'bbox_head.transformer.\1.layers.\2.ffns.0.'),
    (r'^(encoder|decoder)\.layers\.(\d+)\.norms\.', r'bbox_head.transformer.\1.layers.\2.norms.'),
    (r'^level_embed$', 'bbox_head.transformer.level_embeds'),
    (r'^memory_trans_fc\.', 'bbox_head.transformer.enc_output.'),
    (r'^memory_trans_norm\.', 'bbox_head.transformer.enc_output_norm.'),
    (r'^pos_trans_fc\.', 'bbox_head.transformer.pos_trans.'),
    (r'^pos_trans_norm\.', 'bbox_head.transformer.pos_trans_norm.'),
    (r'^reference_points_fc\.', 'bbox_head.transformer.reference_points.'),
    (r'^query_embedding\.', 'bbox_head.query_embedding.'),
]


def convert_mmdet3_keys(state_dict: dict, prefix: str = '') -> dict:
    """An mmdetection 3.x Deformable-DETR state dict (keys after ``prefix``) -> rcnn_det's keys.
    Keys that need no renaming (backbone, neck, bbox_head branches) pass unchanged."""
    converted = {}
    for key, value in state_dict.items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        for pattern, repl in MMDET3_KEY_MAP:
            if re.match(pattern, name):
                name = re.sub(pattern, repl, name)
                break
        converted[(prefix if key.startswith(prefix) else '') + name] = value
    return converted


def is_mmdet3_state_dict(state_dict: dict, prefix: str = '') -> bool:
    return any(k.startswith(prefix + 'encoder.layers.') or k == prefix + 'level_embed'
               for k in state_dict)


def encoder_cfg(encoder: dict) -> dict:
    """mmdet 3.x ``encoder=dict(num_layers, layer_cfg=dict(self_attn_cfg, ffn_cfg))`` -> the
    official ``DetrTransformerEncoder`` config (a config with a ``type`` passes unchanged)."""
    if 'type' in encoder:
        return copy.deepcopy(encoder)
    layer = dict(encoder.get('layer_cfg', {}))
    return dict(type='DetrTransformerEncoder', num_layers=encoder['num_layers'],
                post_norm_cfg=None, transformerlayers=dict(
                    type='BaseTransformerLayer',
                    attn_cfgs=dict(type='MultiScaleDeformableAttention',
                                   **layer.get('self_attn_cfg', {})),
                    ffn_cfgs=dict(type='FFN', **layer.get('ffn_cfg', {})),
                    operation_order=ENCODER_ORDER))


def decoder_cfg(decoder: dict) -> dict:
    """mmdet 3.x ``decoder=dict(num_layers, return_intermediate, layer_cfg=dict(self_attn_cfg,
    cross_attn_cfg, ffn_cfg), post_norm_cfg=None)`` -> the official decoder config."""
    if 'type' in decoder:
        return copy.deepcopy(decoder)
    layer = dict(decoder.get('layer_cfg', {}))
    return dict(type='DeformableDetrTransformerDecoder', num_layers=decoder['num_layers'],
                return_intermediate=decoder.get('return_intermediate', True),
                post_norm_cfg=decoder.get('post_norm_cfg'), transformerlayers=dict(
                    type='DetrTransformerDecoderLayer',
                    attn_cfgs=[dict(type='MultiheadAttention', **layer.get('self_attn_cfg', {})),
                               dict(type='MultiScaleDeformableAttention',
                                    **layer.get('cross_attn_cfg', {}))],
                    ffn_cfgs=dict(type='FFN', **layer.get('ffn_cfg', {})),
                    operation_order=DECODER_ORDER))


@MODELS.register_module()
class DeformableDETR(SingleStageDetector):
    """mmdetection 3.x's DeformableDETR config keys; a single-stage detector whose head holds
    the transformer.

    loss() -> the head's losses (see DeformableDETRHead); predict() -> samples with
    pred_instances in ORIGINAL image pixels; _forward() -> the head's raw outputs.
    """

    def __init__(self, backbone: dict, neck: dict | None = None, encoder: dict | None = None,
                 decoder: dict | None = None, bbox_head: dict | None = None,
                 positional_encoding: dict | None = None, num_queries: int = 100,
                 num_feature_levels: int = 4, with_box_refine: bool = False,
                 as_two_stage: bool = False, train_cfg: dict | None = None,
                 test_cfg: dict | None = None, data_preprocessor: dict | None = None,
                 init_cfg=None) -> None:
        if bbox_head is None or encoder is None or decoder is None:
            raise ValueError('DeformableDETR needs encoder, decoder and bbox_head configs')
        transformer = dict(type='DeformableDetrTransformer', encoder=encoder_cfg(encoder),
                           decoder=decoder_cfg(decoder), num_feature_levels=num_feature_levels,
                           two_stage_num_proposals=num_queries)
        head = dict(copy.deepcopy(bbox_head), transformer=transformer, num_query=num_queries,
                    with_box_refine=with_box_refine, as_two_stage=as_two_stage)
        if positional_encoding is not None:
            head['positional_encoding'] = dict(dict(type='SinePositionalEncoding'),
                                               **positional_encoding)
        super().__init__(backbone, neck, head, train_cfg=train_cfg, test_cfg=test_cfg,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self._register_load_state_dict_pre_hook(self._rename_mmdet3_keys)

    @staticmethod
    def _rename_mmdet3_keys(state_dict, prefix, *args) -> None:
        """``load_state_dict`` of an mmdetection 3.x checkpoint: rename its keys in place."""
        if is_mmdet3_state_dict(state_dict, prefix):
            converted = convert_mmdet3_keys(state_dict, prefix)
            state_dict.clear()
            state_dict.update(converted)

    def _forward(self, inputs: Tensor, data_samples: SampleList | None = None):
        if data_samples is None:
            raise ValueError('DeformableDETR: mode="tensor" needs data_samples (image shapes)')
        return self.bbox_head(self.extract_feat(inputs), [s.metainfo for s in data_samples])
