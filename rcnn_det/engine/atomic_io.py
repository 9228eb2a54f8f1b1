"""Files that are either wholly written or not there: checkpoints and ``last_checkpoint``.

A process killed while it writes ``iter_80.pth`` in place leaves a truncated file under the name
that resuming trusts. Here every file is written to a temporary name in the same folder, flushed
and fsynced, then renamed over its final name (``os.replace`` is atomic on POSIX and Windows),
and the folder is fsynced so that the rename itself survives a crash of the machine. A reader
sees the old file or the new one, never a part.
"""
from __future__ import annotations

import os
import os.path as osp
import secrets
from collections.abc import Callable
from typing import IO

import torch
from mmengine.fileio import LocalBackend, register_backend


def _fsync_dir(folder: str) -> None:
    if os.name != 'posix':  # Windows cannot open a folder for fsync; its rename is durable
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then make it ``path``."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = osp.join(folder, f'.{osp.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp')
    # mode 0o666 less the umask, as open() gives (mkstemp's files are private)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_BINARY', 0), 0o666)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def atomic_torch_save(obj: object, path: str) -> None:
    """``torch.save`` straight into the file (no in-memory copy of the bytes), atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))


@register_backend('rcnn_det_atomic_local')
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose ``put`` writes atomically (see the module docstring):
    what ``CheckpointHook`` uses with a Runner other than rcnn_det's, whose own
    ``save_checkpoint`` writes atomically and faster."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(str(filepath), lambda f: f.write(obj))

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(str(filepath), lambda f: f.write(obj.encode(encoding)))
