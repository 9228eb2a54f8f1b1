"""``DetTTAModel``: test-time augmentation, mmdetection's config keys (``tta_model``,
``tta_pipeline``, ``tools/test.py --tta``).

mmcv's ``TestTimeAug`` transform makes several versions of each test image (scales, flips);
mmengine's ``BaseTTAModel`` runs the wrapped detector on each; this model brings every
version's boxes back to the unflipped original image and merges them with the shared
post-processing (NMS per class, the best ``max_per_img``), as mmdetection's ``DetTTAModel``.
Boxes only: mmdetection does not merge masks either.
"""
from __future__ import annotations

import torch
from mmengine.model import BaseTTAModel
from mmengine.structures import InstanceData
from torch import nn

from rcnn_det.registry import MODELS
from rcnn_det.structures import DetDataSample, bbox_flip

from ..post_processing import Candidates, select_detections
from ..recipes import NMSConfig

DEFAULT_TTA_CFG = dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)


@MODELS.register_module()
class DetTTAModel(BaseTTAModel):
    """Args: ``module`` (the detector's config or module) and ``tta_cfg``: dict(nms=mmdet's NMS
    config, max_per_img) for merging an image's augmented predictions."""

    def __init__(self, module: dict | nn.Module, tta_cfg: dict | None = None, **kwargs) -> None:
        # built from rcnn_det's registry: mmengine's would need the default scope set first
        super().__init__(module=MODELS.build(module) if isinstance(module, dict) else module,
                         **kwargs)
        tta_cfg = dict(DEFAULT_TTA_CFG if tta_cfg is None else tta_cfg)
        self.nms = NMSConfig.from_cfg(tta_cfg.get('nms'), 'tta_model.tta_cfg')
        self.max_per_img = int(tta_cfg.get('max_per_img', DEFAULT_TTA_CFG['max_per_img']))

    def merge_preds(self, data_samples_list: list[list[DetDataSample]]) -> list[DetDataSample]:
        """Per image, its augmented predictions -> one sample with the merged predictions."""
        return [self.merge_augmented(samples) for samples in data_samples_list]

    def merge_augmented(self, samples: list[DetDataSample]) -> DetDataSample:
        """One image's predictions under every augmentation (original image frame, flipped if
        the version was) -> the first sample, with the merged ``pred_instances``."""
        if 'masks' in samples[0].pred_instances:
            raise NotImplementedError('DetTTAModel merges boxes only (as mmdetection): test '
                                      'a mask model without --tta, or evaluate boxes only')
        boxes, scores, labels = [], [], []
        for sample in samples:
            pred = sample.pred_instances
            meta = sample.metainfo
            boxes.append(bbox_flip(pred.bboxes, meta['ori_shape'][:2], meta['flip_direction'])
                         if meta.get('flip') else pred.bboxes)
            scores.append(pred.scores)
            labels.append(pred.labels)
        labels = torch.cat(labels)
        candidates = Candidates(boxes=torch.cat(boxes), scores=torch.cat(scores), labels=labels,
                                image_ids=torch.zeros_like(labels), groups=labels,
                                num_groups=int(labels.max()) + 1 if labels.numel() else 1)
        merged = select_detections(candidates, 1, self.nms, self.max_per_img)[0]
        result = samples[0]
        result.pred_instances = InstanceData(bboxes=merged.bboxes, scores=merged.scores,
                                             labels=merged.labels)
        return result
