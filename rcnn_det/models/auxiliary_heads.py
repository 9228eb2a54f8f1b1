"""Co-DETR's auxiliary-head protocol: what an auxiliary head gives the query head.

An auxiliary head of ``CoDETR`` (listed under ``roi_head`` or ``bbox_head``) trains on the
query head's encoder memory like any head and also returns, from one method, its losses and
its positives: the priors it assigned to objects, which the query head's decoder then learns
from as extra queries (one-to-many supervision). Any head that subclasses ``AuxiliaryHead``
and implements ``loss_and_positives`` can be listed; ``docs/co_detr.md`` shows a new one.

Shape letters: B images, A priors of one image (the same count for every image), E feature
channels, C classes (label C = negative).
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.structures import SampleList


@dataclass
class AuxPositives:
    """An auxiliary head's assignment, one row per prior and so per candidate query."""
    coords: Tensor     # (B, A, 4) the priors, xyxy pixels of the network input
    labels: Tensor     # (B, A) assigned class; C = negative
    targets: Tensor    # (B, A, 4) assigned gt boxes, xyxy pixels (zeros for negatives)
    feats: Tensor      # (B, A, E) the feature of each prior, whose query it initialises

    def __post_init__(self) -> None:
        batch = tuple(self.labels.shape)
        shapes = dict(coords=(*batch, 4), targets=(*batch, 4))
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f'AuxPositives: {name} must be {shape} to match labels '
                                 f'{batch}, got {tuple(getattr(self, name).shape)}')
        if self.feats.dim() != 3 or tuple(self.feats.shape[:2]) != batch:
            raise ValueError(f'AuxPositives: feats must be (B, A, E) with (B, A) = {batch}, got '
                             f'{tuple(self.feats.shape)}')


@dataclass
class AuxLossOutput:
    """``AuxiliaryHead.loss_and_positives``: the head's own losses and its positives."""
    losses: dict
    positives: AuxPositives


class AuxiliaryHead:
    """The protocol of a Co-DETR auxiliary head (a mixin next to the head's own base).

    ``needs_proposals``: True for a second-stage head, which ``CoDETR`` hands the RPN's
    training proposals; a dense head gets None.
    """
    needs_proposals: bool = False

    @abstractmethod
    def loss_and_positives(self, x: tuple[Tensor, ...], batch_data_samples: SampleList,
                           rpn_results_list: list[InstanceData] | None = None
                           ) -> AuxLossOutput:
        """x: the memory maps, L + 1 maps (B, E, H_l, W_l) -> the losses and positives."""
