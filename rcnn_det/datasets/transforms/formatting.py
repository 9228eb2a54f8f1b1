"""``PackDetInputs``: the end of every pipeline; numpy results -> model inputs + DetDataSample.

Shape letters: G non-ignored instances, I ignored (crowd) instances, H x W the image.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.structures import InstanceData

from rcnn_det.registry import TRANSFORMS
from rcnn_det.structures import DetDataSample

# results key -> InstanceData field (mmdet's mapping_table).
INSTANCE_FIELDS = {'gt_bboxes': 'bboxes', 'gt_bboxes_labels': 'labels', 'gt_masks': 'masks'}
DEFAULT_META_KEYS = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                     'flip_direction')


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, C) or (H, W) numpy image -> (C, H, W) contiguous tensor of the same dtype."""
    if img.ndim == 2:
        img = img[..., None]
    # One copy either way: a non-contiguous array (a flipped view) is made contiguous while
    # transposing; a contiguous one is wrapped without copy and permuted by torch.
    if not img.flags.c_contiguous:
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


@TRANSFORMS.register_module()
class PackDetInputs(BaseTransform):
    """Pack an image and its targets as mmdetection 3.x does.

    Returns dict(inputs, data_samples):
        inputs:       (C, H, W) tensor, the image's dtype (uint8 BGR from mmcv's loader)
        data_samples: DetDataSample with
            gt_instances:      bboxes (G, 4) float32, labels (G,) int64, masks (G, H, W) uint8
            ignored_instances: the same fields for the I instances with ``gt_ignore_flags``
            proposals:         bboxes (K, 4), scores (K,) when ``proposals`` is in the results
            metainfo:          the ``meta_keys`` present in the results
    Without ``gt_ignore_flags`` every instance goes to ``gt_instances``.
    """

    def __init__(self, meta_keys: Sequence[str] = DEFAULT_META_KEYS) -> None:
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        packed = {}
        if 'img' in results:
            packed['inputs'] = image_to_tensor(results['img'])
        data_sample = DetDataSample()
        keep = ignored = None
        if 'gt_ignore_flags' in results:
            flags = np.asarray(results['gt_ignore_flags'], dtype=bool)
            keep, ignored = np.flatnonzero(~flags), np.flatnonzero(flags)
        gt_instances, ignored_instances = InstanceData(), InstanceData()
        for key, field in INSTANCE_FIELDS.items():
            if key not in results:
                continue
            values = np.asarray(results[key])
            if keep is None:
                gt_instances[field] = torch.from_numpy(np.ascontiguousarray(values))
            else:
                gt_instances[field] = torch.from_numpy(values[keep])
                ignored_instances[field] = torch.from_numpy(values[ignored])
        data_sample.gt_instances = gt_instances
        data_sample.ignored_instances = ignored_instances
        if 'proposals' in results:
            data_sample.proposals = InstanceData(
                bboxes=torch.from_numpy(np.asarray(results['proposals'], dtype=np.float32)),
                scores=torch.from_numpy(np.asarray(results['proposals_scores'],
                                                   dtype=np.float32)))
        data_sample.set_metainfo({k: results[k] for k in self.meta_keys if k in results})
        packed['data_samples'] = data_sample
        return packed

    def __repr__(self) -> str:
        return f'{type(self).__name__}(meta_keys={self.meta_keys})'
