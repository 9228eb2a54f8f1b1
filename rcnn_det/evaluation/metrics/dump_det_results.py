"""``DumpDetResults``: save predictions to a pickle file (``tools/test.py --out``)."""
from __future__ import annotations

from typing import Any, Sequence

from mmengine.evaluator import DumpResults

from rcnn_det.registry import METRICS

from .coco_metric import encode_masks


@METRICS.register_module()
class DumpDetResults(DumpResults):
    """mmdetection's DumpDetResults: one dict per image with ``img_id``, ``img_path``,
    ``ori_shape`` and ``pred_instances`` (numpy-convertible CPU tensors; masks as COCO RLE so
    the file stays small). Ground truth is not saved."""

    def process(self, data_batch: Any, predictions: Sequence[dict]) -> None:
        kept = []
        for sample in predictions:
            sample = {k: v for k, v in sample.items()
                      if k not in ('gt_instances', 'ignored_instances', 'proposals')}
            pred = dict(sample.get('pred_instances', {}))
            if 'masks' in pred:
                pred['masks'] = encode_masks(pred['masks'])
            sample['pred_instances'] = pred
            kept.append(sample)
        super().process(data_batch, kept)
