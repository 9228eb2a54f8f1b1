"""Evaluation metrics (registered in rcnn_det's METRICS)."""
from .coco_metric import CocoMetric
from .dump_det_results import DumpDetResults
from .voc_metric import VOCMetric

__all__ = ['CocoMetric', 'DumpDetResults', 'VOCMetric']
