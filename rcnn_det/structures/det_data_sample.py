"""``DetDataSample``: what travels with one image from the pipeline to the metric.

Fields (all optional, each an ``InstanceData``):
    gt_instances:      bboxes (G, 4) xyxy px of the network input, labels (G,), masks (G, H, W)
    ignored_instances: the crowd regions of the image, same fields as ``gt_instances``
    proposals:         RPN output, bboxes (K, 4), scores (K,)
    pred_instances:    detections, bboxes (D, 4) xyxy px of the ORIGINAL image, scores, labels
Metainfo: img_path, img_id, ori_shape, img_shape, scale_factor, flip, flip_direction, pad_shape,
batch_input_shape.
"""
from __future__ import annotations

import torch
from mmengine.structures import BaseDataElement, InstanceData
from torch import Tensor


class DetDataSample(BaseDataElement):
    """mmdetection's data sample, with typed accessors for the four instance sets."""

    @property
    def gt_instances(self) -> InstanceData:
        return self._gt_instances

    @gt_instances.setter
    def gt_instances(self, value: InstanceData) -> None:
        self.set_field(value, '_gt_instances', dtype=InstanceData)

    @gt_instances.deleter
    def gt_instances(self) -> None:
        del self._gt_instances

    @property
    def ignored_instances(self) -> InstanceData:
        return self._ignored_instances

    @ignored_instances.setter
    def ignored_instances(self, value: InstanceData) -> None:
        self.set_field(value, '_ignored_instances', dtype=InstanceData)

    @ignored_instances.deleter
    def ignored_instances(self) -> None:
        del self._ignored_instances

    @property
    def proposals(self) -> InstanceData:
        return self._proposals

    @proposals.setter
    def proposals(self, value: InstanceData) -> None:
        self.set_field(value, '_proposals', dtype=InstanceData)

    @proposals.deleter
    def proposals(self) -> None:
        del self._proposals

    @property
    def pred_instances(self) -> InstanceData:
        return self._pred_instances

    @pred_instances.setter
    def pred_instances(self, value: InstanceData) -> None:
        self.set_field(value, '_pred_instances', dtype=InstanceData)

    @pred_instances.deleter
    def pred_instances(self) -> None:
        del self._pred_instances


SampleList = list[DetDataSample]


def unpack_gt_instances(batch_data_samples: SampleList
                        ) -> tuple[list[InstanceData], list[InstanceData | None], list[dict]]:
    """Split samples into (gt instances, ignored instances or None, metainfo) per image."""
    gts, ignored, metas = [], [], []
    for sample in batch_data_samples:
        gts.append(sample.gt_instances)
        ignored.append(sample.ignored_instances if 'ignored_instances' in sample else None)
        metas.append(sample.metainfo)
    return gts, ignored, metas


def meta_pairs(batch_img_metas: list[dict], key: str, device: torch.device,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, 2): the first two values of each image's ``metainfo[key]`` (``img_shape``: (h, w);
    ``scale_factor``: (w, h)). In a graph being exported they are tensors (rows of the graph's
    inputs) and are stacked, so that the graph computes with its inputs, not with the values
    seen while tracing."""
    values = [m[key] for m in batch_img_metas]
    if all(isinstance(v, Tensor) for v in values):
        return torch.stack([v[:2] for v in values]).to(device=device, dtype=dtype)
    return torch.tensor([list(v[:2]) for v in values], dtype=dtype, device=device)
