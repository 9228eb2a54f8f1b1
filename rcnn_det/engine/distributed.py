"""Distributed runs without GPUs.

mmengine's ``pytorch`` launcher calls ``torch.cuda.set_device`` unconditionally and wraps the
model in DDP with ``device_ids=[LOCAL_RANK]``; both fail on a machine without CUDA. When no GPU is
present, ``init_cpu_distributed`` starts the process group itself with the gloo backend (the
Runner then skips its own initialisation) and asks for a DDP wrapper without device ids.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log

# device_ids=None: DDP over CPU parameters (mmengine would pass [LOCAL_RANK], a GPU index).
CPU_MODEL_WRAPPER = dict(type='MMDistributedDataParallel', device_ids=None,
                         broadcast_buffers=False, find_unused_parameters=False)


def init_cpu_distributed(cfg: Config) -> bool:
    """Start gloo for a ``--launcher pytorch`` run on CPUs; True when it did."""
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return False
    if not dist.is_initialized():
        backend = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend', 'gloo')
        if backend != 'gloo':
            print_log(f"no GPU: using the 'gloo' backend instead of {backend!r}",
                      logger='current')
        dist.init_process_group(backend='gloo')  # rank and world size from torchrun's env
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(CPU_MODEL_WRAPPER)
    return True


def destroy_distributed() -> None:
    """End the process group, if one is running (GPU or CPU runs alike).

    A process that exits with a live group can abort on the way out ("terminate called without
    an active exception": the backend's threads are still running when the interpreter tears
    down), which a launcher reports as a failed run after the work is done and saved.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()   # every process done with its collectives: none closes under another
        dist.destroy_process_group()
