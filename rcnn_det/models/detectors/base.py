"""``BaseDetector``: mmengine's model protocol for detectors; holds no algorithm."""
from __future__ import annotations

from abc import ABCMeta, abstractmethod

from mmengine.model import BaseModel
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS
from rcnn_det.structures import SampleList

from ..post_processing import MaskPaste, to_original_image


class BaseDetector(BaseModel, metaclass=ABCMeta):
    """forward(inputs, data_samples, mode):
        'loss'    -> dict of named losses (keys containing 'loss' are summed by mmengine)
        'predict' -> the samples with ``pred_instances`` in the original image frame
        'tensor'  -> raw head outputs
    """

    def __init__(self, data_preprocessor: dict | None = None, init_cfg=None) -> None:
        # Build the preprocessor from rcnn_det's registry, not mmengine's root one, so that
        # MODELS.build(cfg.model) works without a default scope being set first.
        if data_preprocessor is None:
            data_preprocessor = dict(type='DetDataPreprocessor')
        super().__init__(data_preprocessor=MODELS.build(data_preprocessor)
                         if isinstance(data_preprocessor, dict) else data_preprocessor,
                         init_cfg=init_cfg)

    def forward(self, inputs: Tensor, data_samples: SampleList | None = None,
                mode: str = 'tensor'):
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self._forward(inputs, data_samples)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    @property
    def with_neck(self) -> bool:
        return getattr(self, 'neck', None) is not None

    def extract_feat(self, inputs: Tensor) -> tuple[Tensor, ...]:
        """(B, 3, H, W) -> the backbone's maps, through the neck when there is one."""
        x = self.backbone(inputs)
        return self.neck(x) if self.with_neck else x

    @abstractmethod
    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        ...

    def predict(self, inputs: Tensor, data_samples: SampleList, rescale: bool = True) -> SampleList:
        """The samples with ``pred_instances``: the heads' results (``predict_in_input_frame``)
        brought to the original image once (``to_original_image``)."""
        results, mask_paste = self.predict_in_input_frame(inputs, data_samples)
        return self.add_pred_to_datasample(
            data_samples, self.to_original_image(results, data_samples, rescale, mask_paste))

    @abstractmethod
    def predict_in_input_frame(self, inputs: Tensor, data_samples: SampleList
                               ) -> tuple[list[InstanceData], MaskPaste | None]:
        """Per image, the detections in the network input's frame (bboxes, scores, labels, and
        ``mask_probs`` (D, S, S) for a mask head), and how to paste those masks (None without
        a mask head). Reads only the samples' metainfo; ``export_onnx`` traces this."""

    @abstractmethod
    def _forward(self, inputs: Tensor, data_samples: SampleList | None = None):
        ...

    @staticmethod
    def to_original_image(results_list: list[InstanceData], data_samples: SampleList,
                          rescale: bool, mask_paste: MaskPaste | None = None
                          ) -> list[InstanceData]:
        """The heads predict in the network input's frame; this is the one place a detector's
        results reach the original image (``rescale``) or stay (see
        ``post_processing.to_original_image``)."""
        return to_original_image(results_list, [s.metainfo for s in data_samples], rescale,
                                 mask_paste)

    @staticmethod
    def add_pred_to_datasample(data_samples: SampleList,
                               results_list: list[InstanceData]) -> SampleList:
        for sample, pred in zip(data_samples, results_list):
            sample.pred_instances = pred
        return data_samples
