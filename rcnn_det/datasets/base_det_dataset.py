"""``BaseDetDataset``: what every rcnn_det detection dataset adds to mmengine's ``BaseDataset``
(mmdetection's name for the base class of its datasets)."""
from __future__ import annotations

from mmengine.dataset import BaseDataset

from rcnn_det.datasets.samplers.sampler import seeded_rng


class BaseDetDataset(BaseDataset):
    """Data info per image with ``instances`` (``bbox``, ``bbox_label``, ``ignore_flag``, ...),
    read by a subclass's ``load_data_list``."""

    def __getitem__(self, idx: int) -> dict:
        """mmengine's ``__getitem__``; an index from rcnn_det's samplers (``SampleIndex``) runs
        the pipeline with its own seed, so the sample's random augmentations do not depend on
        the data-loader worker or on what was loaded before (exact resume)."""
        seed = getattr(idx, 'seed', None)
        if seed is None:
            return super().__getitem__(idx)
        with seeded_rng(seed):
            return super().__getitem__(int(idx))

    def get_cat_ids(self, idx: int) -> list[int]:
        """Labels (0..C-1, mmdet 3.x's meaning of "cat ids") of the instances of image ``idx``."""
        return [inst['bbox_label'] for inst in self.get_data_info(idx)['instances']]
