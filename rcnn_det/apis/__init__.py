"""Python API for predictions: ``init_detector`` and ``inference_detector`` (mmdetection's)."""
from .inference import inference_detector, inference_pipeline, init_detector

__all__ = ['inference_detector', 'inference_pipeline', 'init_detector']
