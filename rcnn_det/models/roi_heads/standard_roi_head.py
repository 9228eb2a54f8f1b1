"""``StandardRoIHead``: sample proposals, pool their features, classify and refine them, and
(Mask R-CNN) segment the positives / the detections.

Shape letters: B images, K proposals of the batch, R sampled RoIs of the batch (training),
P positive RoIs of the batch, D detections, C classes.
"""
from __future__ import annotations

from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS, TASK_UTILS
from rcnn_det.structures import SampleList, bbox2roi, unpack_gt_instances

from ..recipes import DetectionRecipe, RecipeReader, build_or_pass
from ..task_modules.samplers import SamplingResult
from .base_roi_head import BaseRoIHead
from .bbox_heads import RoITargets
from .mask_heads import MaskTargetRecipe


@MODELS.register_module()
class StandardRoIHead(BaseRoIHead):
    """mmdetection's StandardRoIHead: a box branch and, with ``mask_head``, a mask branch.

    loss(x, proposals, samples) -> dict(loss_cls, acc, loss_bbox[, loss_mask])
        x: L maps (B, C_feat, H_l, W_l); proposals: B x InstanceData(bboxes (K_i, 4), ...)
    predict(...) -> B x InstanceData(bboxes (D, 4), scores (D,), labels (D,)[, masks (D, H, W)
        bool]), in the network-input frame, or the original image's when ``rescale``.

    Without a ``mask_roi_extractor`` the mask head reads the box branch's RoI features
    (mmdet's ``share_roi_extractor``).
    """

    def __init__(self, bbox_roi_extractor=None, bbox_head=None, mask_roi_extractor=None,
                 mask_head=None, shared_head=None, train_cfg: dict | None = None,
                 test_cfg: dict | None = None, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if shared_head is not None:
            raise NotImplementedError('StandardRoIHead: shared_head is not supported')
        if bbox_head is None or bbox_roi_extractor is None:
            raise ValueError('StandardRoIHead needs bbox_roi_extractor and bbox_head')
        if mask_roi_extractor is not None and mask_head is None:
            raise ValueError('StandardRoIHead: mask_roi_extractor is given without a mask_head')
        self.bbox_roi_extractor = build_or_pass(MODELS, bbox_roi_extractor)
        self.bbox_head = build_or_pass(MODELS, bbox_head)
        self.share_roi_extractor = mask_head is not None and mask_roi_extractor is None
        if mask_head is not None:
            self.mask_roi_extractor = (self.bbox_roi_extractor if self.share_roi_extractor
                                       else build_or_pass(MODELS, mask_roi_extractor))
            self.mask_head = build_or_pass(MODELS, mask_head)
        train = RecipeReader(train_cfg, 'roi_head.train_cfg', accepted_no_op=('debug',))
        self.assigner = train.build('assigner', TASK_UTILS, None)
        self.sampler = train.build('sampler', TASK_UTILS, None)
        self.pos_weight = train.pop('pos_weight', -1)
        self.mask_recipe = self.read_mask_recipe(train) if train_cfg is not None else None
        train.reject_rest()
        if train_cfg is not None and (self.assigner is None or self.sampler is None):
            raise KeyError('roi_head.train_cfg: needs both an assigner and a sampler')
        self.test_recipe = DetectionRecipe.from_cfg(test_cfg, 'roi_head.test_cfg')

    def read_mask_recipe(self, train: RecipeReader) -> MaskTargetRecipe | None:
        if not self.with_mask:
            return None
        mask_size = train.pop('mask_size', None)
        if mask_size is None:
            raise KeyError("roi_head.train_cfg: a mask_head needs 'mask_size' (mmdet: 28)")
        return MaskTargetRecipe(
            mask_size=int(mask_size),
            soft_mask_target=bool(train.pop('soft_mask_target', False)),
            mask_target_aligned=bool(train.pop('mask_target_aligned', True)))

    @property
    def with_bbox(self) -> bool:
        return True

    @property
    def with_mask(self) -> bool:
        return hasattr(self, 'mask_head')

    def bbox_forward(self, x: tuple[Tensor, ...], rois: Tensor) -> tuple[Tensor, Tensor]:
        """rois (K, 5) -> (cls_score (K, C + 1), bbox_pred (K, 4C))."""
        feats = self.bbox_roi_extractor(x[:self.bbox_roi_extractor.num_inputs], rois)
        return self.bbox_head(feats)

    def mask_forward(self, x: tuple[Tensor, ...], rois: Tensor) -> Tensor:
        """rois (P, 5) -> mask logits (P, C, S, S)."""
        feats = self.mask_roi_extractor(x[:self.mask_roi_extractor.num_inputs], rois)
        return self.mask_head(feats)

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
        return self.loss_and_targets(x, rpn_results_list, batch_data_samples)[0]

    def loss_and_targets(self, x: tuple[Tensor, ...], rpn_results_list: list[InstanceData],
                         batch_data_samples: SampleList
                         ) -> tuple[dict, tuple[list[SamplingResult], Tensor, Tensor, RoITargets]]:
        """The losses and what they were computed from: the sampling results, the sampled
        rois (R, 5), their RoI features (R, C, S, S) and the box head's targets."""
        if self.assigner is None:
            raise RuntimeError(f'{type(self).__name__}.loss needs a train_cfg (assigner, sampler)')
        sampling_results = self.sample(rpn_results_list, batch_data_samples)
        rois = bbox2roi([res.priors for res in sampling_results])          # (R, 5)
        feats = self.bbox_roi_extractor(x[:self.bbox_roi_extractor.num_inputs], rois)
        cls_score, bbox_pred = self.bbox_head(feats)
        losses, targets = self.bbox_head.loss_and_target(cls_score, bbox_pred, rois,
                                                         sampling_results, self.pos_weight)
        if self.with_mask:
            losses.update(self.mask_loss(x, sampling_results, batch_data_samples))
        return losses, (sampling_results, rois, feats, targets)

    def mask_loss(self, x: tuple[Tensor, ...], sampling_results: list[SamplingResult],
                  batch_data_samples: SampleList) -> dict:
        gts = [sample.gt_instances for sample in batch_data_samples]
        if any('masks' not in gt for gt in gts):
            raise KeyError('StandardRoIHead: the mask_head needs ground-truth masks; load them '
                           'with LoadAnnotations(with_mask=True) in the training pipeline')
        pos_rois = bbox2roi([res.pos_priors for res in sampling_results])    # (P, 5)
        mask_preds = self.mask_forward(x, pos_rois)
        losses, _ = self.mask_head.loss_and_target(mask_preds, sampling_results, gts,
                                                   self.mask_recipe)
        return losses

    def predict(self, x: tuple[Tensor, ...], rpn_results_list: list[InstanceData],
                batch_data_samples: SampleList, rescale: bool = False) -> list[InstanceData]:
        if self.test_recipe is None:
            raise RuntimeError('StandardRoIHead.predict needs a test_cfg '
                               '(score_thr, nms, max_per_img)')
        metas = [s.metainfo for s in batch_data_samples]
        rois = bbox2roi([res.bboxes for res in rpn_results_list])           # (K, 5)
        cls_score, bbox_pred = self.bbox_forward(x, rois)
        results = self.bbox_head.predict_by_feat(rois, cls_score, bbox_pred, metas,
                                                 self.test_recipe,
                                                 rescale=rescale and not self.with_mask)
        if not self.with_mask:
            return results
        return self.predict_mask(x, metas, results, rescale)

    def predict_mask(self, x: tuple[Tensor, ...], metas: list[dict],
                     results_list: list[InstanceData], rescale: bool) -> list[InstanceData]:
        """Masks of the detections (boxes in the network-input frame), pasted per image."""
        mask_rois = bbox2roi([res.bboxes for res in results_list])         # (D, 5)
        mask_preds = self.mask_forward(x, mask_rois)
        return self.mask_head.predict_by_feat(mask_preds, results_list, metas, self.test_recipe,
                                              rescale)
