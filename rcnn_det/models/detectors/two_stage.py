"""``TwoStageDetector``: backbone -> neck -> RPN proposals -> RoI head (Faster/Mask R-CNN)."""
from __future__ import annotations

import copy

from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS
from rcnn_det.structures import SampleList, bbox2roi

from ..post_processing import MaskPaste
from ..recipes import ProposalRecipe, unknown_key_error
from .base import BaseDetector

TWO_STAGE_CFG_KEYS = ('rpn', 'rpn_proposal', 'rcnn')
# mmdet's StandardRoIHead.forward (mode='tensor') runs the mask branch on the first 100 RoIs
TENSOR_MODE_MASK_ROIS = 100


def split_two_stage_cfg(train_cfg: dict | None, test_cfg: dict | None,
                        where: str = 'model') -> dict:
    """mmdet's detector-level ``train_cfg``/``test_cfg`` -> each head's share.

    Returns dict(rpn_train=train_cfg.rpn, rpn_proposal=train_cfg.rpn_proposal,
    rcnn_train=train_cfg.rcnn, rpn_test=test_cfg.rpn, rcnn_test=test_cfg.rcnn); missing parts
    are None (a model built for inference only needs no train_cfg).
    """
    for name, cfg in (('train_cfg', train_cfg), ('test_cfg', test_cfg)):
        for key in (cfg or {}):
            if key not in TWO_STAGE_CFG_KEYS:
                raise unknown_key_error(f'{where}.{name}', key, list(TWO_STAGE_CFG_KEYS))
    train_cfg, test_cfg = train_cfg or {}, test_cfg or {}
    return dict(rpn_train=train_cfg.get('rpn'), rpn_proposal=train_cfg.get('rpn_proposal'),
                rcnn_train=train_cfg.get('rcnn'), rpn_test=test_cfg.get('rpn'),
                rcnn_test=test_cfg.get('rcnn'))


@MODELS.register_module()
class TwoStageDetector(BaseDetector):
    """mmdetection's TwoStageDetector; FasterRCNN and MaskRCNN are this class under their names.

    loss() -> dict(loss_rpn_cls, loss_rpn_bbox, loss_cls, acc, loss_bbox, ...)
    predict() -> samples with pred_instances (bboxes in ORIGINAL image pixels, scores, labels)
    """

    def __init__(self, backbone: dict, neck: dict | None = None, rpn_head: dict | None = None,
                 roi_head: dict | None = None, train_cfg: dict | None = None,
                 test_cfg: dict | None = None, data_preprocessor: dict | None = None,
                 init_cfg=None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if rpn_head is None or roi_head is None:
            raise ValueError('TwoStageDetector needs both rpn_head and roi_head')
        cfg = split_two_stage_cfg(train_cfg, test_cfg)
        self.backbone = MODELS.build(backbone)
        self.neck = MODELS.build(neck) if neck is not None else None
        self.rpn_head = MODELS.build(dict(copy.deepcopy(rpn_head), train_cfg=cfg['rpn_train'],
                                          test_cfg=cfg['rpn_test']))
        self.roi_head = MODELS.build(dict(copy.deepcopy(roi_head), train_cfg=cfg['rcnn_train'],
                                          test_cfg=cfg['rcnn_test']))
        self.rpn_proposal = ProposalRecipe.from_cfg(cfg['rpn_proposal'] or cfg['rpn_test'],
                                                    'model.train_cfg.rpn_proposal')

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        x = self.extract_feat(inputs)
        if self.rpn_proposal is None:
            raise RuntimeError('TwoStageDetector.loss needs train_cfg.rpn_proposal '
                               '(or test_cfg.rpn) to make training proposals')
        losses, proposals = self.rpn_head.loss_and_predict(x, data_samples, self.rpn_proposal)
        losses.update(self.roi_head.loss(x, proposals, data_samples))
        return losses

    def predict_in_input_frame(self, inputs: Tensor, data_samples: SampleList
                               ) -> tuple[list[InstanceData], MaskPaste | None]:
        x = self.extract_feat(inputs)
        if 'proposals' in data_samples[0]:
            proposals = [s.proposals for s in data_samples]
        else:
            proposals = self.rpn_head.predict(x, data_samples)
        return self.roi_head.predict(x, proposals, data_samples), self.roi_head.mask_paste

    def _forward(self, inputs: Tensor, data_samples: SampleList | None = None):
        """Raw outputs: (rpn cls_scores, rpn bbox_preds, roi cls_score, roi bbox_pred[, mask
        logits of the first ``TENSOR_MODE_MASK_ROIS`` proposals])."""
        x = self.extract_feat(inputs)
        rpn_outs = self.rpn_head(x)
        if data_samples is None:
            return rpn_outs
        proposals = self.rpn_head.predict(x, data_samples)
        rois = bbox2roi([p.bboxes for p in proposals])
        outs = rpn_outs + self.roi_head.bbox_forward(x, rois)
        if getattr(self.roi_head, 'with_mask', False):
            outs = outs + (self.roi_head.mask_forward(x, rois[:TENSOR_MODE_MASK_ROIS]),)
        return outs


@MODELS.register_module()
class FasterRCNN(TwoStageDetector):
    """Faster R-CNN (Ren et al., 2015): mmdetection's config name for ``TwoStageDetector``.

    Registers the official name only; it overrides nothing.
    """


@MODELS.register_module()
class MaskRCNN(TwoStageDetector):
    """Mask R-CNN (He et al., 2017): mmdetection's config name for ``TwoStageDetector`` whose
    ``roi_head`` has a ``mask_head``.

    Registers the official name only; it overrides nothing.
    """
