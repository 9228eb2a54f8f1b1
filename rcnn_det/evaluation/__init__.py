"""Evaluation: every module here that registers a metric is imported, so that the registry's
``locations`` (``rcnn_det.evaluation``) find them without a manual import."""
from .metrics import CocoMetric, DumpDetResults, VOCMetric

__all__ = ['CocoMetric', 'DumpDetResults', 'VOCMetric']
