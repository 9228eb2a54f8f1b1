"""``RPN``: backbone -> neck -> an RPN head whose proposals are the results (mmdetection's
region-proposal-only detector, e.g. to measure proposal recall)."""
from __future__ import annotations

from rcnn_det.registry import MODELS

from ..recipes import unknown_key_error
from .single_stage import SingleStageDetector


@MODELS.register_module()
class RPN(SingleStageDetector):
    """mmdetection's RPN: the head (``rpn_head``, stored as ``bbox_head`` as mmdet's state dicts
    name it) is built with ``train_cfg.rpn`` and ``test_cfg.rpn``; predict() returns its
    proposals (class 0) in the original image. As in mmdetection, ``min_bbox_size`` of the
    final proposals is measured in the original image (``size_frame='original'``).
    """

    def __init__(self, backbone: dict, neck: dict | None = None, rpn_head: dict | None = None,
                 train_cfg: dict | None = None, test_cfg: dict | None = None,
                 data_preprocessor: dict | None = None, init_cfg=None) -> None:
        if rpn_head is None:
            raise ValueError('RPN needs an rpn_head')
        for name, cfg in (('train_cfg', train_cfg), ('test_cfg', test_cfg)):
            for key in (cfg or {}):
                if key != 'rpn':
                    raise unknown_key_error(f'model.{name}', key, ['rpn'])
        test = (test_cfg or {}).get('rpn')
        if test is not None:
            test = dict(dict(size_frame='original'), **test)
        super().__init__(backbone, neck, rpn_head, train_cfg=(train_cfg or {}).get('rpn'),
                         test_cfg=test, data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
