"""``StandardRoIHead``: sample proposals, pool their features, classify and refine them.

Shape letters: B images, K proposals of the batch, R sampled RoIs of the batch (training),
C classes.
"""
from __future__ import annotations

from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS, TASK_UTILS
from rcnn_det.structures import SampleList, bbox2roi, unpack_gt_instances

from ..recipes import DetectionRecipe, RecipeReader, build_or_pass
from ..task_modules.samplers import SamplingResult
from .base_roi_head import BaseRoIHead


@MODELS.register_module()
class StandardRoIHead(BaseRoIHead):
    """mmdetection's StandardRoIHead (box branch).

    loss(x, proposals, samples) -> dict(loss_cls, acc, loss_bbox)
        x: L maps (B, C_feat, H_l, W_l); proposals: B x InstanceData(bboxes (K_i, 4), ...)
    predict(...) -> B x InstanceData(bboxes (D, 4), scores (D,), labels (D,)), boxes in the
        network-input frame, or the original image's when ``rescale``.
    """

    def __init__(self, bbox_roi_extractor=None, bbox_head=None, mask_roi_extractor=None,
                 mask_head=None, shared_head=None, train_cfg: dict | None = None,
                 test_cfg: dict | None = None, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if mask_head is not None or mask_roi_extractor is not None:
            raise NotImplementedError('StandardRoIHead: the mask branch (mask_head, '
                                      'mask_roi_extractor) is not available yet')
        if shared_head is not None:
            raise NotImplementedError('StandardRoIHead: shared_head is not supported')
        if bbox_head is None or bbox_roi_extractor is None:
            raise ValueError('StandardRoIHead needs bbox_roi_extractor and bbox_head')
        self.bbox_roi_extractor = build_or_pass(MODELS, bbox_roi_extractor)
        self.bbox_head = build_or_pass(MODELS, bbox_head)
        train = RecipeReader(train_cfg, 'roi_head.train_cfg', accepted_no_op=('debug',))
        self.assigner = train.build('assigner', TASK_UTILS, None)
        self.sampler = train.build('sampler', TASK_UTILS, None)
        self.pos_weight = train.pop('pos_weight', -1)
        train.reject_rest()
        if train_cfg is not None and (self.assigner is None or self.sampler is None):
            raise KeyError('roi_head.train_cfg: needs both an assigner and a sampler')
        self.test_recipe = DetectionRecipe.from_cfg(test_cfg, 'roi_head.test_cfg')

    @property
    def with_bbox(self) -> bool:
        return True

    @property
    def with_mask(self) -> bool:
        return False

    def bbox_forward(self, x: tuple[Tensor, ...], rois: Tensor) -> tuple[Tensor, Tensor]:
        """rois (K, 5) -> (cls_score (K, C + 1), bbox_pred (K, 4C))."""
        feats = self.bbox_roi_extractor(x[:self.bbox_roi_extractor.num_inputs], rois)
        return self.bbox_head(feats)

    def sample(self, rpn_results_list: list[InstanceData],
               batch_data_samples: SampleList) -> list[SamplingResult]:
        """Assign every proposal (plus the gt boxes) and keep a fixed-size sample per image."""
        gts, gts_ignore, _ = unpack_gt_instances(batch_data_samples)
        results = []
        for proposals, gt, gt_ignore in zip(rpn_results_list, gts, gts_ignore):
            priors = InstanceData(priors=proposals.bboxes)
            assign = self.assigner.assign(priors, gt, gt_ignore)
            results.append(self.sampler.sample(assign, priors, gt))
        return results

    def loss(self, x: tuple[Tensor, ...], rpn_results_list: list[InstanceData],
             batch_data_samples: SampleList) -> dict:
        if self.assigner is None:
            raise RuntimeError('StandardRoIHead.loss needs a train_cfg (assigner, sampler)')
        sampling_results = self.sample(rpn_results_list, batch_data_samples)
        rois = bbox2roi([res.priors for res in sampling_results])          # (R, 5)
        cls_score, bbox_pred = self.bbox_forward(x, rois)
        losses, _ = self.bbox_head.loss_and_target(cls_score, bbox_pred, rois, sampling_results,
                                                   self.pos_weight)
        return losses

    def predict(self, x: tuple[Tensor, ...], rpn_results_list: list[InstanceData],
                batch_data_samples: SampleList, rescale: bool = False) -> list[InstanceData]:
        if self.test_recipe is None:
            raise RuntimeError('StandardRoIHead.predict needs a test_cfg '
                               '(score_thr, nms, max_per_img)')
        metas = [s.metainfo for s in batch_data_samples]
        rois = bbox2roi([res.bboxes for res in rpn_results_list])           # (K, 5)
        cls_score, bbox_pred = self.bbox_forward(x, rois)
        return self.bbox_head.predict_by_feat(rois, cls_score, bbox_pred, metas,
                                              self.test_recipe, rescale)
