from .batch_sampler import AspectRatioBatchSampler
from .sampler import (DefaultSampler, InfiniteSampler, SampleIndex, sample_seed, seeded_rng)

__all__ = ['AspectRatioBatchSampler', 'DefaultSampler', 'InfiniteSampler', 'SampleIndex',
           'sample_seed', 'seeded_rng']
