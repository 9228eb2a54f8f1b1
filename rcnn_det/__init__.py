"""rcnn_det: config-driven object detection on plain PyTorch, mmengine and mmcv-lite."""
from .version import __version__

__all__ = ['__version__']
