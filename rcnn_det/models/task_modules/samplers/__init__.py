from .pseudo_sampler import PseudoSampler
from .random_sampler import RandomSampler, random_subset, sample_pos_neg
from .sampling_result import SamplingResult

__all__ = ['PseudoSampler', 'RandomSampler', 'SamplingResult', 'random_subset', 'sample_pos_neg']
