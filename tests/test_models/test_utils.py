"""reduce_mean: the mean over the processes of a run, the value itself without one."""
from __future__ import annotations

import torch.distributed as dist
import torch.multiprocessing as mp

from rcnn_det.models.utils import reduce_mean


def _worker(rank: int, init_file: str, results) -> None:
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        results[rank] = reduce_mean(float(rank * 4 + 1))        # 1 and 5
    finally:
        dist.destroy_process_group()


def test_mean_over_two_processes(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path / 'init'), results), nprocs=2)
    assert dict(results) == {0: 3.0, 1: 3.0}


def test_without_a_process_group_the_value_itself():
    assert reduce_mean(7) == 7.0
