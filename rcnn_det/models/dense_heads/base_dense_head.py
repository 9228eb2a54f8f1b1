"""``BaseDenseHead``: the interface every dense (per-location) head offers the detectors."""
from __future__ import annotations

from abc import ABCMeta, abstractmethod

from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.structures import SampleList


class BaseDenseHead(BaseModule, metaclass=ABCMeta):
    """mmdetection's dense-head interface; holds no algorithm.

    loss(x, batch_data_samples) -> dict of losses
    predict(x, batch_data_samples) -> list of InstanceData, one per image, boxes in the network
        input's frame (the detector converts them to the original image)
    """

    @abstractmethod
    def loss(self, x: tuple[Tensor, ...], batch_data_samples: SampleList) -> dict:
        ...

    @abstractmethod
    def predict(self, x: tuple[Tensor, ...], batch_data_samples: SampleList
                ) -> list[InstanceData]:
        ...
