"""find_resume_checkpoint: the file last_checkpoint names when it is a complete checkpoint, else
the newest readable one (by mtime) with a WARNING naming both; is_readable_checkpoint;
check_optimizer_state_fits refuses an optimizer state saved for other parameters."""
from __future__ import annotations

import logging
import os

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper
from torch import nn

from rcnn_det.engine import CheckpointMismatchError, find_resume_checkpoint
from rcnn_det.engine.runner import check_optimizer_state_fits, is_readable_checkpoint


def checkpoint(path, mtime: float | None = None, truncated: bool = False) -> str:
    """A small real checkpoint at ``path`` (the first half of its bytes if ``truncated``),
    modified at ``mtime`` (seconds since the epoch)."""
    torch.save(dict(state_dict=dict(w=torch.arange(300.)), meta=dict(iter=1)), path)
    if truncated:
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return str(path)


def point(work_dir, target) -> None:
    (work_dir / 'last_checkpoint').write_text(str(target))


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def mm_log():
    """The records of mmengine's current logger (print_log(logger='current')). MMLogger is
    outside the logging hierarchy, so pytest's caplog never sees them."""
    logger = MMLogger.get_current_instance()
    handler = Collect()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def warnings_of(mm_log) -> list[str]:
    return [r.getMessage() for r in mm_log.records if r.levelno == logging.WARNING]


T = 1_700_000_000  # a fixed mtime base


def test_last_checkpoint_names_a_good_file(tmp_path, mm_log):
    """The named file wins even over a newer one, without a warning."""
    named = checkpoint(tmp_path / 'iter_4.pth', T)
    checkpoint(tmp_path / 'iter_8.pth', T + 10)
    point(tmp_path, named)
    assert find_resume_checkpoint(str(tmp_path)) == named
    assert warnings_of(mm_log) == []


def test_last_checkpoint_names_a_missing_file(tmp_path, mm_log):
    """The newest readable checkpoint by mtime (not by name), and a warning naming the
    pointer, the missing file and the one used instead."""
    checkpoint(tmp_path / 'iter_8.pth', T + 10)
    newest = checkpoint(tmp_path / 'iter_6.pth', T + 20)  # written later (e.g. a second run)
    checkpoint(tmp_path / 'iter_4.pth', T)
    missing = str(tmp_path / 'iter_10.pth')
    point(tmp_path, missing)
    assert find_resume_checkpoint(str(tmp_path)) == newest
    [warning] = warnings_of(mm_log)
    assert str(tmp_path / 'last_checkpoint') in warning
    assert missing in warning and 'is missing' in warning and newest in warning


def test_last_checkpoint_names_a_truncated_file(tmp_path, mm_log):
    """A truncated named file (the newest one) is skipped for the newest readable one."""
    checkpoint(tmp_path / 'iter_2.pth', T)
    good = checkpoint(tmp_path / 'iter_4.pth', T + 10)
    truncated = checkpoint(tmp_path / 'iter_6.pth', T + 20, truncated=True)
    point(tmp_path, truncated)
    assert find_resume_checkpoint(str(tmp_path)) == good
    [warning] = warnings_of(mm_log)
    assert truncated in warning and 'not a complete checkpoint' in warning and good in warning


def test_newest_readable_skips_truncated_ones(tmp_path, mm_log):
    """Several truncated files newer than the only good one: the good one."""
    good = checkpoint(tmp_path / 'iter_2.pth', T)
    for i, name in enumerate(('iter_4.pth', 'iter_6.pth', 'iter_8.pth')):
        checkpoint(tmp_path / name, T + 10 * (i + 1), truncated=True)
    point(tmp_path, tmp_path / 'iter_8.pth')
    assert find_resume_checkpoint(str(tmp_path)) == good


def test_all_truncated_gives_none(tmp_path, mm_log):
    """Nothing readable: None, and the warning says so."""
    for i, name in enumerate(('iter_2.pth', 'iter_4.pth')):
        checkpoint(tmp_path / name, T + i, truncated=True)
    point(tmp_path, tmp_path / 'iter_4.pth')
    assert find_resume_checkpoint(str(tmp_path)) is None
    [warning] = warnings_of(mm_log)
    assert 'iter_4.pth' in warning and 'nothing' in warning


def test_no_last_checkpoint(tmp_path, mm_log):
    """Checkpoints but no pointer (or an empty one): the newest, with a warning naming the
    work dir and the file."""
    checkpoint(tmp_path / 'iter_2.pth', T + 10)
    newest = checkpoint(tmp_path / 'iter_1.pth', T + 20)
    (tmp_path / 'notes.txt').write_text('not a checkpoint')
    assert find_resume_checkpoint(str(tmp_path)) == newest
    [warning] = warnings_of(mm_log)
    assert str(tmp_path) in warning and newest in warning and 'no last_checkpoint' in warning

    (tmp_path / 'last_checkpoint').write_text('\n')
    assert find_resume_checkpoint(str(tmp_path)) == newest


def test_empty_work_dir(tmp_path):
    """No checkpoint at all: None."""
    assert find_resume_checkpoint(str(tmp_path)) is None
    assert find_resume_checkpoint(str(tmp_path / 'never_created')) is None


def test_the_named_files_folder_is_searched_too(tmp_path, mm_log):
    """Checkpoints saved to another folder (CheckpointHook's out_dir): the newest readable one
    there counts as well."""
    work_dir, out_dir = tmp_path / 'work', tmp_path / 'out'
    work_dir.mkdir()
    out_dir.mkdir()
    checkpoint(work_dir / 'old.pth', T)
    newest = checkpoint(out_dir / 'iter_4.pth', T + 10)
    point(work_dir, out_dir / 'iter_6.pth')
    assert find_resume_checkpoint(str(work_dir)) == newest


def test_is_readable_checkpoint(tmp_path):
    """Complete torch.save file: yes; truncated, garbage, empty, missing, a folder: no."""
    assert is_readable_checkpoint(checkpoint(tmp_path / 'good.pth'))
    assert not is_readable_checkpoint(checkpoint(tmp_path / 'half.pth', truncated=True))
    (tmp_path / 'garbage.pth').write_bytes(os.urandom(4096))
    assert not is_readable_checkpoint(str(tmp_path / 'garbage.pth'))
    (tmp_path / 'empty.pth').write_bytes(b'')
    assert not is_readable_checkpoint(str(tmp_path / 'empty.pth'))
    assert not is_readable_checkpoint(str(tmp_path / 'missing.pth'))
    assert not is_readable_checkpoint(str(tmp_path))


# ---- check_optimizer_state_fits ----------------------------------------------------------------

def trained_state(model: nn.Module, optimizer_cls, **kwargs) -> dict:
    """The optimizer's state_dict after one step, so that it has per-parameter state."""
    optimizer = optimizer_cls(model.parameters(), lr=0.1, **kwargs)
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def wrapper(model: nn.Module, optimizer_cls, **kwargs) -> OptimWrapper:
    return OptimWrapper(optimizer=optimizer_cls(model.parameters(), lr=0.1, **kwargs))


OPTIMIZERS = [(torch.optim.SGD, dict(momentum=0.9)), (torch.optim.SGD, dict()),
              (torch.optim.AdamW, dict())]


@pytest.mark.parametrize('optimizer_cls, kwargs', OPTIMIZERS)
def test_optimizer_state_that_fits(optimizer_cls, kwargs):
    """The state of the same parameters passes (AdamW's 0-dim 'step' included)."""
    state = trained_state(nn.Linear(3, 4), optimizer_cls, **kwargs)
    check_optimizer_state_fits(wrapper(nn.Linear(3, 4), optimizer_cls, **kwargs), state,
                               'iter_2.pth')


@pytest.mark.parametrize('optimizer_cls, kwargs', OPTIMIZERS[0:1] + OPTIMIZERS[2:])
def test_optimizer_state_of_other_shapes(optimizer_cls, kwargs):
    """Same number of tensors, another shape: refused, naming the file and the shapes."""
    state = trained_state(nn.Linear(3, 5), optimizer_cls, **kwargs)
    with pytest.raises(CheckpointMismatchError, match=r'work/iter_2\.pth: optimizer state .* '
                                                      r'has shape \(5, 3\), the parameter '
                                                      r'\(4, 3\)'):
        check_optimizer_state_fits(wrapper(nn.Linear(3, 4), optimizer_cls, **kwargs), state,
                                   'work/iter_2.pth')


def test_optimizer_state_of_other_groups():
    """Another number of tensors per group, or another number of groups: refused, naming
    the file."""
    state = trained_state(nn.Linear(3, 4), torch.optim.SGD, momentum=0.9)
    bigger = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    with pytest.raises(CheckpointMismatchError, match=r'iter_2\.pth: .*\[2\].*\[4\]'):
        check_optimizer_state_fits(wrapper(bigger, torch.optim.SGD, momentum=0.9), state,
                                   'iter_2.pth')
    model = nn.Linear(3, 4)
    two_groups = OptimWrapper(optimizer=torch.optim.SGD(
        [dict(params=[model.weight]), dict(params=[model.bias], lr=0.01)], lr=0.1))
    with pytest.raises(CheckpointMismatchError, match=r'iter_2\.pth: .*\[2\].*\[1, 1\]'):
        check_optimizer_state_fits(two_groups, state, 'iter_2.pth')


def test_optimizer_states_shaped_otherwise_are_accepted(tmp_path):
    """Adafactor's row/column statistics are not shaped like their parameters: no refusal."""
    from mmengine.optim import OptimWrapper as MMEngineOptimWrapper
    from torch import nn

    from rcnn_det.engine.runner import check_optimizer_state_fits
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    optimizer = torch.optim.Adafactor(model.parameters())
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    fresh = MMEngineOptimWrapper(optimizer=torch.optim.Adafactor(model.parameters()))
    check_optimizer_state_fits(fresh, optimizer.state_dict(), str(tmp_path / 'x.pth'))
