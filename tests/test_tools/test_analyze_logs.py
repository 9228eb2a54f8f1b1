"""tools/analysis_tools/analyze_logs.py through its command line: curves of a real 4-iteration
training (validation at the end) next to hand-written logs, iteration times checked against
statistics computed here from a hand-written log, and clear errors for unknown keys and for
files that are not logs."""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest
from matplotlib.image import imread

from conftest import PYTHON, REPO_ROOT, run_tool, write_tiny_demo_config

pytestmark = pytest.mark.slow

TOOL = str(REPO_ROOT / 'tools' / 'analysis_tools' / 'analyze_logs.py')


@pytest.fixture(scope='module')
def work_dir(tmp_path_factory, tiny_shapes_root) -> Path:
    """The work dir of a 4-iteration training of the demo config on the tiny shapes data, with
    one validation after the last iteration."""
    root = tmp_path_factory.mktemp('analyze_logs')
    cfg = write_tiny_demo_config(root / 'tiny.py', tiny_shapes_root, max_iters=4,
                                 checkpoint_interval=4)
    run_tool([PYTHON, str(REPO_ROOT / 'tools/train.py'), str(cfg), '--work-dir',
              str(root / 'work')], cwd=root)
    return root / 'work'


def write_log(path: Path, lines: list[dict]) -> Path:
    """A scalar log as mmengine writes it: one JSON object per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(line) + '\n' for line in lines))
    return path


def train_line(step: int, time: float, epoch: int | None = None) -> dict:
    """A training line in mmengine's layout (``epoch`` only in an epoch-based run)."""
    line = dict(lr=0.01, data_time=0.01, loss=2.0 / step, loss_cls=1.0 / step, time=time,
                iter=step, step=step)
    return line if epoch is None else dict(line, epoch=epoch)


def val_line(step: int, mAP: float) -> dict:
    """A validation line: its own time and data_time, which iteration statistics ignore."""
    return {'coco/bbox_mAP': mAP, 'coco/bbox_mAP_50': mAP + 0.2, 'data_time': 7.0,
            'time': 9.0, 'step': step}


# Two epochs of four iterations; the validation lines' time (9.0) must not count.
EPOCH_TIMES = [[0.9, 0.5, 0.6, 0.4], [0.8, 0.45, 0.35, 0.4]]


def epoch_based_log(path: Path) -> Path:
    lines = []
    for epoch, times in enumerate(EPOCH_TIMES, 1):
        lines += [train_line(4 * (epoch - 1) + i, t, epoch) for i, t in enumerate(times, 1)]
        lines.append(val_line(epoch, 0.1 * epoch))
    return write_log(path, lines)


def failure(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """The output of a tool run that must fail."""
    with pytest.raises(AssertionError) as err:
        run_tool(args, cwd, env=env)
    return str(err.value)


def test_plot_curve_two_logs(tmp_path, work_dir):
    """loss and bbox_mAP of the real run (found from its work dir) and of a hand-written
    iteration-based run: one PNG of two panels, each point series where it belongs."""
    other = write_log(tmp_path / 'other' / '20260101_000000' / 'vis_data' / 'scalars.json',
                      [train_line(s, 0.5) for s in range(1, 7)] + [val_line(0, 0.3)])
    out = tmp_path / 'curves' / 'loss_map.png'
    proc = run_tool([PYTHON, TOOL, 'plot_curve', str(work_dir), str(other), '--keys', 'loss',
                     'bbox_mAP', '--title', 'tiny', '--out', str(out)], cwd=tmp_path)
    run = f'work/{next(work_dir.glob("*/vis_data/scalars.json")).parents[1].name}'
    # Iteration-based: the validation lines' step is 0, placed at the iteration before them.
    assert f'plot curve of {run}, metric is loss: 4 points, iter 1 to 4' in proc.stdout
    assert f'plot curve of {run}, metric is coco/bbox_mAP: 1 point, iter 4' in proc.stdout
    assert ('plot curve of other/20260101_000000, metric is coco/bbox_mAP: 1 point, iter 6'
            in proc.stdout)
    assert f'save curve to: {out}' in proc.stdout
    image = imread(out)
    assert image.shape == (700, 800, 4)  # two 8 x 3.5 inch panels at 100 dpi, RGBA
    assert image.std() > 0


def test_plot_curve_epoch_based(tmp_path):
    """Metrics of epoch-based runs against the epoch; legend names and --style accepted; no
    display and no --out: a clear error."""
    log = epoch_based_log(tmp_path / 'ep.json')
    out = tmp_path / 'map.png'
    proc = run_tool([PYTHON, TOOL, 'plot_curve', str(log), '--keys', 'coco/bbox_mAP_50',
                     'loss_cls', '--legend', 'mine', '--style', 'ggplot', '--out', str(out)],
                    cwd=tmp_path)
    assert 'plot curve of mine, metric is coco/bbox_mAP_50: 2 points, epoch 1 to 2' in proc.stdout
    assert 'plot curve of mine, metric is loss_cls: 8 points, iter 1 to 8' in proc.stdout
    assert imread(out).shape == (700, 800, 4)
    # Without --out the figure is shown, which needs an interactive matplotlib backend.
    message = failure([PYTHON, TOOL, 'plot_curve', str(log), '--keys', 'loss'], cwd=tmp_path,
                      env=dict(MPLBACKEND='Agg'))
    assert 'no display to show the figure on (matplotlib backend Agg): pass --out' in message


def test_cal_train_time(tmp_path):
    """The printed statistics equal those computed here, without and with the first
    iteration of each epoch."""
    log = epoch_based_log(tmp_path / 'ep.json')
    proc = run_tool([PYTHON, TOOL, 'cal_train_time', str(log)], cwd=tmp_path)
    kept = [times[1:] for times in EPOCH_TIMES]
    flat = [t for times in kept for t in times]
    means = [statistics.fmean(times) for times in kept]
    assert proc.stdout.splitlines()[:8] == [
        '-----Analyze train time of ep-----',
        f'slowest epoch 1, average time is {means[0]:.4f} s/iter',
        f'fastest epoch 2, average time is {means[1]:.4f} s/iter',
        f'time std over epochs is {statistics.pstdev(means):.4f}',
        'slowest iter 3, time is 0.6000 s/iter',
        'fastest iter 7, time is 0.3500 s/iter',
        f'time std over iters is {statistics.pstdev(flat):.4f}',
        f'average iter time: {statistics.fmean(flat):.4f} s/iter (6 logged iterations, the '
        'first of each epoch left out)']
    proc = run_tool([PYTHON, TOOL, 'cal_train_time', str(log), '--include-outliers'],
                    cwd=tmp_path)
    flat = [t for times in EPOCH_TIMES for t in times]
    assert 'slowest iter 1, time is 0.9000 s/iter' in proc.stdout
    assert (f'average iter time: {statistics.fmean(flat):.4f} s/iter (8 logged iterations)'
            in proc.stdout)


def test_cal_train_time_of_training(tmp_path, work_dir):
    """The real run's log, given as its timestamp folder: the average of its logged times
    after the first."""
    log = next(work_dir.glob('*/vis_data/scalars.json'))
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    times = [line['time'] for line in lines if 'loss' in line]
    proc = run_tool([PYTHON, TOOL, 'cal_train_time', str(log.parents[1])], cwd=tmp_path)
    assert len(times) == 4
    assert (f'average iter time: {statistics.fmean(times[1:]):.4f} s/iter (3 logged '
            'iterations, the first left out)') in proc.stdout


def test_work_dir_reads_the_newest_run(tmp_path):
    """A work dir with two runs: the most recently written log is read, and said so."""
    old = write_log(tmp_path / 'work' / '20260101_000000' / 'vis_data' / 'scalars.json',
                    [train_line(s, 1.0) for s in range(1, 4)])
    new = write_log(tmp_path / 'work' / '20260102_000000' / 'vis_data' / 'scalars.json',
                    [train_line(s, 2.0) for s in range(1, 4)])
    os.utime(old, (1e9, 1e9))
    os.utime(new, (2e9, 2e9))
    proc = run_tool([PYTHON, TOOL, 'cal_train_time', 'work'], cwd=tmp_path)
    assert (f'work: reading {Path("work") / "20260102_000000" / "vis_data" / "scalars.json"} '
            '(the newest of 2 runs)') in proc.stdout
    assert 'Analyze train time of work/20260102_000000' in proc.stdout
    assert 'average iter time: 2.0000 s/iter' in proc.stdout


def test_unknown_key(tmp_path, work_dir):
    """A key that the log lacks: named, with the file and the keys that it has; no PNG."""
    out = tmp_path / 'x.png'
    message = failure([PYTHON, TOOL, 'plot_curve', str(work_dir), '--keys', 'loss',
                       'segm_mAP', '--out', str(out)], cwd=tmp_path)
    assert "has no key 'segm_mAP'" in message
    assert str(next(work_dir.glob('*/vis_data/scalars.json'))) in message
    assert 'its training keys: acc, data_time, grad_norm, loss, loss_bbox' in message
    assert 'its validation keys: coco/bbox_mAP, coco/bbox_mAP_50' in message
    assert not out.exists()


def test_not_a_log(tmp_path, work_dir):
    """Missing paths, folders without a log and files that are not scalar logs."""
    text_log = next(work_dir.glob('*/*.log'))  # mmengine's text log, not the JSON one
    message = failure([PYTHON, TOOL, 'cal_train_time', str(text_log)], cwd=tmp_path)
    assert f'{text_log} line 1 is not JSON' in message
    bad = write_log(tmp_path / 'bad.json', [train_line(1, 0.5), {'loss': 1.0}])
    message = failure([PYTHON, TOOL, 'plot_curve', str(bad), '--keys', 'loss', '--out',
                       'x.png'], cwd=tmp_path)
    assert f'{bad} line 2 is not a scalar log line' in message
    message = failure([PYTHON, TOOL, 'cal_train_time', 'missing'], cwd=tmp_path)
    assert 'no such log file or work dir: missing' in message
    message = failure([PYTHON, TOOL, 'cal_train_time', str(REPO_ROOT / 'configs')],
                      cwd=tmp_path)
    assert 'holds no vis_data/scalars.json' in message
