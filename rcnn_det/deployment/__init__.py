"""Deployment: ONNX export of the detectors (``export_onnx``) and onnxruntime inference
(``OnnxDetector``, which ``rcnn_det.apis.init_detector`` returns for a ``.onnx`` file)."""
from .onnx_export import ExportableDetector, detections_to_results, export_onnx

__all__ = ['ExportableDetector', 'detections_to_results', 'export_onnx']
