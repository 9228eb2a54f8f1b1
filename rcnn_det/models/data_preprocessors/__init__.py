from .batch_augments import BatchFixedSizePad
from .data_preprocessor import DetDataPreprocessor

__all__ = ['BatchFixedSizePad', 'DetDataPreprocessor']
