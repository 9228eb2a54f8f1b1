"""``BaseRoIHead``: the interface of second-stage heads; holds no algorithm."""
from __future__ import annotations

from abc import ABCMeta, abstractmethod

from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.structures import SampleList


class BaseRoIHead(BaseModule, metaclass=ABCMeta):
    """loss(x, rpn_results_list, batch_data_samples) -> dict of losses
    predict(x, rpn_results_list, batch_data_samples) -> list of InstanceData, in the network
        input's frame
    """

    @abstractmethod
    def loss(self, x: tuple[Tensor, ...], rpn_results_list: list[InstanceData],
             batch_data_samples: SampleList) -> dict:
        ...

    @abstractmethod
    def predict(self, x: tuple[Tensor, ...], rpn_results_list: list[InstanceData],
                batch_data_samples: SampleList) -> list[InstanceData]:
        ...
