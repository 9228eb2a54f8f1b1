"""``AspectRatioBatchSampler``: batches of images that are all landscape or all portrait.

Images of one batch are padded to a common size; mixing a 320x160 and a 160x320 image pads both
to 320x320 and wastes half the batch on zeros. Grouping by orientation avoids most of that.
"""
from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import BatchSampler, Sampler

from rcnn_det.registry import DATA_SAMPLERS


@DATA_SAMPLERS.register_module()
class AspectRatioBatchSampler(BatchSampler):
    """Group the indices of ``sampler`` into batches by orientation (mmdetection 3.x semantics).

    Indices are read from ``sampler`` in its order and put in one of two buckets, width < height
    or width >= height (from ``sampler.dataset.get_data_info(idx)``); a bucket that reaches
    ``batch_size`` is yielded. At the end of a finite epoch the leftovers of both buckets are
    yielded together, so the last one or two batches may mix orientations; with ``drop_last``
    only a final batch shorter than ``batch_size`` is dropped. Every index of the sampler's epoch
    is yielded exactly once (without ``drop_last``), and ``len()`` is exact.

    Works with ``DefaultSampler`` and ``InfiniteSampler`` (then it never ends); in
    distributed runs each rank's sampler already yields only that rank's shard. mmengine's loops
    call ``batch_sampler.sampler.set_epoch``, so ``sampler`` keeps its name.
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool = False) -> None:
        if not isinstance(sampler, Sampler):
            raise TypeError(f'AspectRatioBatchSampler: sampler must be a torch Sampler, got '
                            f'{type(sampler).__name__}')
        if not hasattr(sampler, 'dataset'):
            raise TypeError(f'AspectRatioBatchSampler: {type(sampler).__name__} has no '
                            '`dataset` to read image sizes from (use DefaultSampler or '
                            'InfiniteSampler)')
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f'AspectRatioBatchSampler: batch_size must be a positive int, got '
                             f'{batch_size!r}')
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self._skip = 0

    def _is_landscape(self, idx: int) -> bool:
        info = self.sampler.dataset.get_data_info(idx)
        return info['width'] >= info['height']

    def fast_forward(self, num_batches: int) -> None:
        """The next pass starts after its first ``num_batches`` batches: they are formed from
        the sampler's indices as usual (image sizes come from the annotations) and dropped."""
        self._skip = num_batches

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        for batch in self._batches():
            if skip:
                skip -= 1
            else:
                yield batch

    def _batches(self) -> Iterator[list[int]]:
        buckets: tuple[list[int], list[int]] = ([], [])  # (portrait, landscape)
        for idx in self.sampler:
            bucket = buckets[self._is_landscape(idx)]
            bucket.append(idx)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()
        left = buckets[0] + buckets[1]
        for start in range(0, len(left), self.batch_size):
            batch = left[start:start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.sampler) // self.batch_size
        return (len(self.sampler) + self.batch_size - 1) // self.batch_size
