"""atomic_write and its users: the final name holds the old file or the new one, never a part;
no temporary file is left behind; new files get open()'s mode; the mmengine file backend
'rcnn_det_atomic_local' writes the same way."""
from __future__ import annotations

import os
import stat

import pytest
import torch
from mmengine.fileio import get_file_backend

from rcnn_det.engine.atomic_io import (AtomicLocalBackend, atomic_torch_save, atomic_write,
                                       atomic_write_text)


def names(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_atomic_write_creates_and_replaces(tmp_path):
    """A new file, then a replacement; the folder holds only the final file."""
    path = tmp_path / 'sub' / 'out.bin'  # the folder is created
    atomic_write(str(path), lambda f: f.write(b'first'))
    assert path.read_bytes() == b'first'
    atomic_write(str(path), lambda f: f.write(b'second, longer'))
    assert path.read_bytes() == b'second, longer'
    assert names(path.parent) == ['out.bin']


@pytest.mark.parametrize('error', [RuntimeError, KeyboardInterrupt])
def test_a_writer_that_raises_leaves_the_old_file(tmp_path, error):
    """The writer raises after writing part of the new content: the old content stays under
    the name, the error comes through, and no temporary file is left."""
    path = tmp_path / 'ckpt.pth'
    path.write_bytes(b'old content')

    def write(f):
        f.write(b'new cont')
        raise error('killed midway')

    with pytest.raises(error, match='killed midway'):
        atomic_write(str(path), write)
    assert path.read_bytes() == b'old content'
    assert names(tmp_path) == ['ckpt.pth']

    with pytest.raises(error):
        atomic_write(str(tmp_path / 'new.pth'), write)
    assert names(tmp_path) == ['ckpt.pth']


def test_new_file_mode_is_opens(tmp_path):
    """A new file gets the mode open() gives under this process's umask, not mkstemp's 0600."""
    made_by_open = tmp_path / 'by_open'
    with open(made_by_open, 'wb') as f:
        f.write(b'x')
    atomic_write(str(tmp_path / 'by_atomic'), lambda f: f.write(b'x'))
    mode = stat.S_IMODE(os.stat(tmp_path / 'by_atomic').st_mode)
    assert mode == stat.S_IMODE(os.stat(made_by_open).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_atomic_torch_save_and_text_round_trip(tmp_path):
    """torch.save through atomic_torch_save loads back (weights_only); text is UTF-8."""
    obj = dict(state_dict=dict(w=torch.arange(6.).reshape(2, 3)), meta=dict(iter=4, name='ü'))
    path = tmp_path / 'iter_4.pth'
    atomic_torch_save(obj, str(path))
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded['state_dict']['w'], obj['state_dict']['w'])
    assert loaded['meta'] == obj['meta']
    atomic_write_text(str(tmp_path / 'last_checkpoint'), f'{path} ü')
    assert (tmp_path / 'last_checkpoint').read_text(encoding='utf-8') == f'{path} ü'
    assert names(tmp_path) == ['iter_4.pth', 'last_checkpoint']


def test_atomic_local_backend_through_mmengine(tmp_path, monkeypatch):
    """get_file_backend(backend='rcnn_det_atomic_local') gives AtomicLocalBackend; put and
    put_text write the file (folders created); a failure before the rename (here fsync)
    leaves the old file and no temporary one."""
    backend = get_file_backend(str(tmp_path),
                               backend_args=dict(backend='rcnn_det_atomic_local'))
    assert isinstance(backend, AtomicLocalBackend)
    path = tmp_path / 'work' / 'iter_2.pth'
    backend.put(b'\x00checkpoint bytes', str(path))
    assert path.read_bytes() == b'\x00checkpoint bytes'
    backend.put_text('work/iter_2.pth', tmp_path / 'work' / 'last_checkpoint')
    assert backend.get_text(str(tmp_path / 'work' / 'last_checkpoint')) == 'work/iter_2.pth'
    assert names(tmp_path / 'work') == ['iter_2.pth', 'last_checkpoint']

    def no_fsync(fd):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'fsync', no_fsync)
    with pytest.raises(OSError, match='disk full'):
        backend.put(b'new bytes', str(path))
    with pytest.raises(OSError, match='disk full'):
        backend.put_text('other', str(tmp_path / 'work' / 'last_checkpoint'))
    assert path.read_bytes() == b'\x00checkpoint bytes'
    assert backend.get_text(str(tmp_path / 'work' / 'last_checkpoint')) == 'work/iter_2.pth'
    assert names(tmp_path / 'work') == ['iter_2.pth', 'last_checkpoint']
