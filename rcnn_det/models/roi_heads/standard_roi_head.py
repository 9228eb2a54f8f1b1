"""``StandardRoIHead``: sample proposals, pool their features, classify and refine them, and
(Mask R-CNN) segment the positives / the detections.

Shape letters: B images, K proposals of the batch, R sampled RoIs of the batch (training),
P positive RoIs of the batch, D detections, C classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS, TASK_UTILS
from rcnn_det.structures import SampleList, bbox2roi, unpack_gt_instances

from ..post_processing import MaskPaste
from ..recipes import DetectionRecipe, RecipeReader, build_or_pass
from ..task_modules.samplers import SamplingResult
from .base_roi_head import BaseRoIHead
from .bbox_heads import RoITargets
from .mask_heads import MaskTargetRecipe


@dataclass(frozen=True)
class RoITrainRecipe:
    """mmdet's ``train_cfg.rcnn``, read: the built assigner and sampler, the positives'
    classification weight, and how mask targets are made (None without a mask head)."""
    assigner: Any
    sampler: Any
    pos_weight: float = -1
    mask: MaskTargetRecipe | None = None


@dataclass
class RoILossOutput:
    """``StandardRoIHead.loss_and_targets``: the losses and what they were computed from."""
    losses: dict
    sampling_results: list[SamplingResult]
    rois: Tensor            # (R, 5) the sampled RoIs, images in order, positives first
    bbox_feats: Tensor      # (R, C_feat, S, S) their pooled features
    targets: RoITargets     # the box head's targets of those RoIs


@MODELS.register_module()
class StandardRoIHead(BaseRoIHead):
    """mmdetection's StandardRoIHead: a box branch and, with ``mask_head``, a mask branch.

    loss(x, proposals, samples) -> dict(loss_cls, acc, loss_bbox[, loss_mask])
        x: L maps (B, C_feat, H_l, W_l); proposals: B x InstanceData(bboxes (K_i, 4), ...)
    predict(...) -> B x InstanceData(bboxes (D, 4), scores (D,), labels (D,)[, mask_probs
        (D, S, S)]) in the network input's frame; the detector pastes the masks
        (``post_processing.to_original_image`` with this head's ``mask_paste``).

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
        self.train_recipe = self.read_train_cfg(train_cfg)
        self.test_recipe = DetectionRecipe.from_cfg(test_cfg, 'roi_head.test_cfg')

    def read_train_cfg(self, train_cfg: dict | None) -> RoITrainRecipe | None:
        if train_cfg is None:
            return None
        train = RecipeReader(train_cfg, 'roi_head.train_cfg', accepted_no_op=('debug',))
        assigner = train.build('assigner', TASK_UTILS, None)
        sampler = train.build('sampler', TASK_UTILS, None)
        pos_weight = train.pop('pos_weight', -1)
        mask = None
        if self.with_mask:
            mask_size = train.pop('mask_size', None)
            if mask_size is None:
                raise KeyError("roi_head.train_cfg: a mask_head needs 'mask_size' (mmdet: 28)")
            mask = MaskTargetRecipe(
                mask_size=int(mask_size),
                soft_mask_target=bool(train.pop('soft_mask_target', False)),
                mask_target_aligned=bool(train.pop('mask_target_aligned', True)))
        train.reject_rest()
        if assigner is None or sampler is None:
            raise KeyError('roi_head.train_cfg: needs both an assigner and a sampler')
        return RoITrainRecipe(assigner, sampler, pos_weight, mask)

    @property
    def mask_paste(self) -> MaskPaste | None:
        """How the detector pastes this head's masks (None without a mask head)."""
        if not self.with_mask or self.test_recipe is None:
            return None
        return MaskPaste(self.test_recipe.mask_thr_binary, self.test_recipe.mask_paste)

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
            assign = self.train_recipe.assigner.assign(priors, gt, gt_ignore)
            results.append(self.train_recipe.sampler.sample(assign, priors, gt))
        return results

    def loss(self, x: tuple[Tensor, ...], rpn_results_list: list[InstanceData],
             batch_data_samples: SampleList) -> dict:
        return self.loss_and_targets(x, rpn_results_list, batch_data_samples).losses

    def loss_and_targets(self, x: tuple[Tensor, ...], rpn_results_list: list[InstanceData],
                         batch_data_samples: SampleList) -> RoILossOutput:
        """The losses and what they were computed from."""
        if self.train_recipe is None:
            raise RuntimeError(f'{type(self).__name__}.loss needs a train_cfg (assigner, sampler)')
        sampling_results = self.sample(rpn_results_list, batch_data_samples)
        rois = bbox2roi([res.priors for res in sampling_results])          # (R, 5)
        feats = self.bbox_roi_extractor(x[:self.bbox_roi_extractor.num_inputs], rois)
        cls_score, bbox_pred = self.bbox_head(feats)
        losses, targets = self.bbox_head.loss_and_target(cls_score, bbox_pred, rois,
                                                         sampling_results,
                                                         self.train_recipe.pos_weight)
        if self.with_mask:
            losses.update(self.mask_loss(x, sampling_results, batch_data_samples))
        return RoILossOutput(losses, sampling_results, rois, feats, targets)

    def mask_loss(self, x: tuple[Tensor, ...], sampling_results: list[SamplingResult],
                  batch_data_samples: SampleList) -> dict:
        gts = [sample.gt_instances for sample in batch_data_samples]
        if any('masks' not in gt for gt in gts):
            raise KeyError('StandardRoIHead: the mask_head needs ground-truth masks; load them '
                           'with LoadAnnotations(with_mask=True) in the training pipeline')
        pos_rois = bbox2roi([res.pos_priors for res in sampling_results])    # (P, 5)
        mask_preds = self.mask_forward(x, pos_rois)
        losses, _ = self.mask_head.loss_and_target(mask_preds, sampling_results, gts,
                                                   self.train_recipe.mask)
        return losses

    def predict(self, x: tuple[Tensor, ...], rpn_results_list: list[InstanceData],
                batch_data_samples: SampleList) -> list[InstanceData]:
        if self.test_recipe is None:
            raise RuntimeError('StandardRoIHead.predict needs a test_cfg '
                               '(score_thr, nms, max_per_img)')
        metas = [s.metainfo for s in batch_data_samples]
        rois = bbox2roi([res.bboxes for res in rpn_results_list])           # (K, 5)
        cls_score, bbox_pred = self.bbox_forward(x, rois)
        results = self.bbox_head.predict_by_feat(rois, cls_score, bbox_pred, metas,
                                                 self.test_recipe)
        return self.predict_mask(x, results) if self.with_mask else results

    def predict_mask(self, x: tuple[Tensor, ...], results_list: list[InstanceData]
                     ) -> list[InstanceData]:
        """The detections (boxes in the network input's frame) with their ``mask_probs``."""
        mask_rois = bbox2roi([res.bboxes for res in results_list])         # (D, 5)
        return self.mask_head.predict_by_feat(self.mask_forward(x, mask_rois), results_list)
