"""Training curves and iteration times from the logs that ``tools/train.py`` writes
(mmdetection 3.x's tool):

    python tools/analysis_tools/analyze_logs.py plot_curve LOG [LOG ...] [--keys loss bbox_mAP]
        [--legend NAME ...] [--title T] [--style STYLE] [--out FILE.png]
    python tools/analysis_tools/analyze_logs.py cal_train_time LOG [LOG ...] [--include-outliers]

A LOG is the JSON scalar log of one run, ``WORK_DIR/<timestamp>/vis_data/scalars.json`` (or its
twin ``vis_data/<timestamp>.json``), or a folder holding one: the timestamp folder, its
``vis_data`` or the work dir (then the most recently written run's log is read). Each line is
one JSON object with a ``step``: a training line holds ``lr``, ``loss``, the loss terms,
``time``, ``data_time``, ``iter`` (and ``epoch`` when the run is epoch-based) at ``step`` =
iteration; a validation line holds the metrics (``coco/bbox_mAP``, ...), and its ``step`` is
the epoch (mmengine's ``LoggerHook(log_metric_by_epoch=True)``, the default), which is 0
throughout an iteration-based run.

``plot_curve`` draws one panel per key, every log on each panel. A key is a training key
(``loss``, ``loss_cls``, ``lr``, ...) or a metric, with or without its prefix (``bbox_mAP``
finds ``coco/bbox_mAP``). Training keys are plotted against the iteration; metrics against
the epoch when every log is of an epoch-based run, else against the iteration at which
validation ran (that of the training line before it). ``--out`` writes the figure (PNG, or
any format matplotlib knows by its suffix); without it the figure is shown, which needs a
display.

``cal_train_time`` prints, per log, the slowest and fastest logged iterations, the standard
deviation and the average of the ``time`` field (seconds per iteration, as the logger reports
it: averaged over the log processor's ``window_size``), and for an epoch-based run
mmdetection's per-epoch lines. The first logged iteration of every epoch (of the run, when it
is iteration-based) carries the start-up cost and is left out unless ``--include-outliers``.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# Fields that locate a line rather than measure anything.
INDEX_KEYS = ('step', 'iter', 'epoch')
# matplotlib's built-in backends that cannot open a window (matplotlib.backends.BackendFilter
# lists them from matplotlib 3.9 on; mmengine accepts older releases).
NON_INTERACTIVE_BACKENDS = ('agg', 'cairo', 'pdf', 'pgf', 'ps', 'svg', 'template')


def is_number(value: object) -> bool:
    """Whether a logged value can be plotted (mmengine logs only numbers as scalars)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class TrainingLog:
    """One run's scalar log, split into training and validation lines.

    train: the training lines as logged, in order (each has ``step`` = its iteration)
    val:   the validation lines' metrics (the keys with a ``/``), each with ``iter``, the
           iteration it ran after, and in an epoch-based run ``epoch``
    by_epoch: whether the training lines carry an ``epoch`` (an epoch-based run)
    """
    path: Path
    train: list[dict]
    val: list[dict]
    by_epoch: bool

    def keys(self, split: str) -> list[str]:
        """The plottable keys of the ``'train'`` or ``'val'`` lines, sorted."""
        lines = self.train if split == 'train' else self.val
        return sorted({k for line in lines for k, v in line.items()
                       if k not in INDEX_KEYS and is_number(v)})


def find_log(arg: str) -> Path:
    """The scalar log that a command-line LOG names: the file itself, or the one of a run
    folder, or the most recently written ``*/vis_data/scalars.json`` of a work dir."""
    path = Path(arg)
    if path.is_file():
        return path
    if not path.exists():
        raise ValueError(f'no such log file or work dir: {arg}')
    for candidate in (path / 'scalars.json', path / 'vis_data' / 'scalars.json'):
        if candidate.is_file():
            print(f'{arg}: reading {candidate}')
            return candidate
    runs = sorted(path.glob('*/vis_data/scalars.json'), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ValueError(f'{arg} holds no vis_data/scalars.json: pass a log written by '
                         'tools/train.py, its <timestamp> folder or its work dir')
    others = f' (the newest of {len(runs)} runs)' if len(runs) > 1 else ''
    print(f'{arg}: reading {runs[-1]}{others}')
    return runs[-1]


def read_lines(path: Path) -> list[dict]:
    """The non-blank lines of a scalar log as dicts; ValueError naming the file and the line
    that is not one."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.readlines()
    except UnicodeDecodeError:
        raise ValueError(f'{path} is not a text file: not a log written by tools/train.py') \
            from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f'{path} line {number} is not JSON ({err.msg}): not a log written '
                             'by tools/train.py (WORK_DIR/<timestamp>/vis_data/scalars.json)') \
                from None
        if not isinstance(record, dict) or not isinstance(record.get('step'), int):
            raise ValueError(f'{path} line {number} is not a scalar log line (a JSON object '
                             f'with an integer "step"): {line.strip()[:100]}')
        records.append(record)
    if not records:
        raise ValueError(f'{path} is empty: no log lines')
    return records


def load_log(path: Path) -> TrainingLog:
    """Read a scalar log (see the module docstring) into its training and validation lines."""
    train, val_lines = [], []
    for record in read_lines(path):
        metrics = {k: v for k, v in record.items() if '/' in k}
        if metrics:
            # The validation loop's own time and data_time are left out, as mmdetection does.
            last_iter = train[-1]['step'] if train else 0
            val_lines.append((record['step'], last_iter, metrics))
        elif len(record) > 1:  # a line holding a step alone measures nothing
            train.append(record)
    by_epoch = any('epoch' in line for line in train)
    # A validation line's step is the epoch (0 all along in an iteration-based run), so the
    # training line before it gives its iteration; in an iteration-based run logged with
    # LoggerHook(log_metric_by_epoch=False) the step is the iteration, never the smaller one.
    if by_epoch:
        val = [dict(metrics, epoch=step, iter=last_iter)
               for step, last_iter, metrics in val_lines]
    else:
        val = [dict(metrics, iter=max(step, last_iter))
               for step, last_iter, metrics in val_lines]
    return TrainingLog(path, train, val, by_epoch)


def run_names(paths: list[Path]) -> list[str]:
    """Default legend names: ``WORK_DIR/<timestamp>`` for a log in a run's ``vis_data``, else
    the file name without its suffix; the paths themselves where those names repeat."""
    names = []
    for path in paths:
        path = path.resolve()
        in_run = path.parent.name == 'vis_data' and len(path.parents) > 3
        names.append(f'{path.parents[2].name}/{path.parents[1].name}' if in_run else path.stem)
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def resolve_key(log: TrainingLog, key: str) -> tuple[str, str]:
    """The key of ``log`` that a command-line key names, and its split (``'train'`` or
    ``'val'``); a metric's prefix may be left out. ValueError listing the log's keys if none
    (or several) match."""
    train_keys, val_keys = log.keys('train'), log.keys('val')
    if key in train_keys:
        return key, 'train'
    if key in val_keys:
        return key, 'val'
    matches = [k for k in val_keys if k.split('/')[-1] == key]
    if len(matches) == 1:
        return matches[0], 'val'
    if matches:
        raise ValueError(f'{key!r} is ambiguous in {log.path}: it may be any of '
                         f'{", ".join(matches)}; pass one of them')
    hint = '' if log.val else ' (it holds no validation results)'
    raise ValueError(f'{log.path} has no key {key!r}{hint}; its training keys: '
                     f'{", ".join(train_keys) or "none"}; its validation keys: '
                     f'{", ".join(val_keys) or "none"}')


def series(log: TrainingLog, key: str, split: str, unit: str) -> tuple[list[int], list[float]]:
    """The points (x in ``unit``: ``'iter'`` or ``'epoch'``, value) of ``key`` in the ``split``
    lines of ``log``, in log order."""
    lines, x_key = (log.train, 'step') if split == 'train' else (log.val, unit)
    points = [(line[x_key], line[key]) for line in lines if is_number(line.get(key))]
    return [x for x, _ in points], [y for _, y in points]


def plot_curve(axes: Sequence[Axes], logs: list[TrainingLog], names: list[str],
               keys: list[str], resolved: list[list[tuple[str, str]]]) -> None:
    """Draw each key on its panel, a curve per log: training keys against the iteration,
    metrics marked at each validation, against the epoch when every run is epoch-based and
    else against the iteration. ``resolved[i][j]``: ``resolve_key(logs[i], keys[j])``."""
    val_unit = 'epoch' if all(log.by_epoch for log in logs) else 'iter'
    for row, (key, ax) in enumerate(zip(keys, axes)):
        units = []
        for log, name, log_keys in zip(logs, names, resolved):
            full_key, split = log_keys[row]
            units.append(val_unit if split == 'val' else 'iter')
            xs, ys = series(log, full_key, split, units[-1])
            points = f'{len(xs)} points, {units[-1]} {xs[0]} to {xs[-1]}' if len(xs) > 1 \
                else f'1 point, {units[-1]} {xs[0]}'
            print(f'plot curve of {name}, metric is {full_key}: {points}')
            if split == 'val':
                ax.plot(xs, ys, label=name, marker='o')
            else:
                ax.plot(xs, ys, label=name, linewidth=0.8)
        ax.set_xlabel(' / '.join(dict.fromkeys(units)))
        ax.set_ylabel(key)
        ax.legend()


def draw(args: argparse.Namespace, logs: list[TrainingLog], names: list[str],
         resolved: list[list[tuple[str, str]]]) -> None:
    """plot_curve's figure, one panel per key: written to ``--out`` or shown."""
    # Imported here: pyplot is most of the tool's start-up time, which cal_train_time and the
    # checks of the logs do without; Agg draws without a display.
    import matplotlib
    if args.out is not None:
        matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    if args.style is not None:
        if args.style not in plt.style.available:
            raise ValueError(f'unknown --style {args.style!r}; matplotlib has '
                             f'{", ".join(sorted(plt.style.available))}')
        plt.style.use(args.style)
    fig, axes = plt.subplots(len(args.keys), 1, figsize=(8, 3.5 * len(args.keys)),
                             squeeze=False)
    plot_curve(axes[:, 0], logs, names, args.keys, resolved)
    if args.title is not None:
        fig.suptitle(args.title)
    fig.tight_layout()
    if args.out is None:
        if plt.get_backend().lower() in NON_INTERACTIVE_BACKENDS:
            raise ValueError(f'no display to show the figure on (matplotlib backend '
                             f'{plt.get_backend()}): pass --out FILE.png')
        plt.show()
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f'save curve to: {args.out.resolve()}')


def cal_train_time(log: TrainingLog, name: str, include_outliers: bool) -> None:
    """Print the iteration-time statistics of one log (see the module docstring)."""
    epochs: dict[int, list[dict]] = {}
    for line in log.train:
        if is_number(line.get('time')):
            epochs.setdefault(line.get('epoch', 0), []).append(line)
    if not epochs:
        raise ValueError(f'{log.path} has no training line with a "time"')
    if not include_outliers:
        epochs = {epoch: lines[1:] for epoch, lines in epochs.items() if len(lines) > 1}
        if not epochs:
            raise ValueError(f'{log.path}: each logged iteration is the first of its epoch (or '
                             'of the run), left out as an outlier; pass --include-outliers')
    print(f'{"-" * 5}Analyze train time of {name}{"-" * 5}')
    if log.by_epoch:
        epoch_times = {epoch: float(np.mean([line['time'] for line in lines]))
                       for epoch, lines in epochs.items()}
        for which, epoch in (('slowest', max(epoch_times, key=epoch_times.get)),
                             ('fastest', min(epoch_times, key=epoch_times.get))):
            print(f'{which} epoch {epoch}, average time is {epoch_times[epoch]:.4f} s/iter')
        print(f'time std over epochs is {np.std(list(epoch_times.values())):.4f}')
    lines = [line for epoch_lines in epochs.values() for line in epoch_lines]
    times = np.array([line['time'] for line in lines])
    for which, line in (('slowest', lines[times.argmax()]), ('fastest', lines[times.argmin()])):
        print(f'{which} iter {line["step"]}, time is {line["time"]:.4f} s/iter')
    print(f'time std over iters is {times.std():.4f}')
    left_out = '' if include_outliers else (
        ', the first of each epoch left out' if log.by_epoch else ', the first left out')
    print(f'average iter time: {times.mean():.4f} s/iter ({len(lines)} logged iterations'
          f'{left_out})\n')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Analyze the json logs of tools/train.py')
    tasks = parser.add_subparsers(dest='task', required=True)
    plot = tasks.add_parser('plot_curve', help='plot training curves and validation metrics')
    timing = tasks.add_parser('cal_train_time', help='average time per training iteration')
    for sub in (plot, timing):
        sub.add_argument('json_logs', nargs='+',
                         help='vis_data/scalars.json of a run, its folder or its work dir')
    plot.add_argument('--keys', nargs='+', default=['bbox_mAP'],
                      help='keys to plot, e.g. loss loss_cls lr bbox_mAP (coco/ may be left out)')
    plot.add_argument('--legend', nargs='+', help='one name per log (default: the run names)')
    plot.add_argument('--title', help='title of the figure')
    plot.add_argument('--style', help='a matplotlib style, e.g. seaborn-v0_8-whitegrid')
    plot.add_argument('--out', type=Path, help='write the figure here instead of showing it')
    timing.add_argument('--include-outliers', action='store_true',
                        help='keep the first logged iteration of every epoch (of the run, '
                             'when it is iteration-based)')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    try:
        if args.task == 'plot_curve' and args.legend is not None \
                and len(args.legend) != len(args.json_logs):
            raise ValueError(f'--legend has {len(args.legend)} names for '
                             f'{len(args.json_logs)} logs')
        paths = [find_log(arg) for arg in args.json_logs]
        logs = [load_log(path) for path in paths]
        names = run_names(paths)
        if args.task == 'cal_train_time':
            for log, name in zip(logs, names):
                cal_train_time(log, name, args.include_outliers)
            return
        # Every key in every log before anything is drawn.
        resolved = [[resolve_key(log, key) for key in args.keys] for log in logs]
        draw(args, logs, args.legend or names, resolved)
    except ValueError as err:
        sys.exit(f'analyze_logs.py: error: {err}')


if __name__ == '__main__':
    main()
