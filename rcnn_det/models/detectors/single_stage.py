"""``SingleStageDetector``: backbone -> neck -> one dense head that predicts the detections."""
from __future__ import annotations

import copy

from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS
from rcnn_det.structures import SampleList

from .base import BaseDetector


@MODELS.register_module()
class SingleStageDetector(BaseDetector):
    """mmdetection's SingleStageDetector (ATSS, RetinaNet, FCOS, ... under their names).

    ``train_cfg``/``test_cfg`` are the head's recipes, handed to ``bbox_head`` when it is built.
    loss() -> the head's losses; predict() -> samples with pred_instances (bboxes in ORIGINAL
    image pixels, scores, labels); _forward() -> the head's raw outputs.
    """

    def __init__(self, backbone: dict, neck: dict | None = None, bbox_head: dict | None = None,
                 train_cfg: dict | None = None, test_cfg: dict | None = None,
                 data_preprocessor: dict | None = None, init_cfg=None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if bbox_head is None:
            raise ValueError('SingleStageDetector needs a bbox_head')
        self.backbone = MODELS.build(backbone)
        self.neck = MODELS.build(neck) if neck is not None else None
        self.bbox_head = MODELS.build(dict(copy.deepcopy(bbox_head), train_cfg=train_cfg,
                                           test_cfg=test_cfg))

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        return self.bbox_head.loss(self.extract_feat(inputs), data_samples)

    def predict_in_input_frame(self, inputs: Tensor, data_samples: SampleList
                               ) -> tuple[list[InstanceData], None]:
        return self.bbox_head.predict(self.extract_feat(inputs), data_samples), None

    def _forward(self, inputs: Tensor, data_samples: SampleList | None = None):
        return self.bbox_head(self.extract_feat(inputs))


@MODELS.register_module()
class ATSS(SingleStageDetector):
    """ATSS (Zhang et al., 2020): mmdetection's config name for a ``SingleStageDetector`` with
    an ``ATSSHead``. Registers the official name only; it overrides nothing."""
