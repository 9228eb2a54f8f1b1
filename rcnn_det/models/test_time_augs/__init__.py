"""Test-time augmentation (``tta_model`` in configs, ``tools/test.py --tta``)."""
from .det_tta import DetTTAModel

__all__ = ['DetTTAModel']
