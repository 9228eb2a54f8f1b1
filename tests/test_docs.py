"""The documentation stays true: the registered-types table of docs/config_guide.md lists exactly
what importing rcnn_det registers, and every markdown file cited in code or docs exists."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

CONFIG_GUIDE = REPO_ROOT / 'docs' / 'config_guide.md'

# Run in a fresh interpreter, so that types registered by other tests of the session (toy heads)
# do not count: import rcnn_det and each of its subpackages (what the registries' `locations`
# import before a build), then report, per registry of rcnn_det.registry, the names in its own
# module_dict and the names registered elsewhere in its tree (mmengine's, mmcv's).
REGISTERED_TYPES_SCRIPT = """
import importlib, json, pkgutil
import rcnn_det
from rcnn_det import registry
for sub in pkgutil.iter_modules(rcnn_det.__path__):
    importlib.import_module('rcnn_det.' + sub.name)
out = {}
for var, reg in vars(registry).items():
    if isinstance(reg, registry.DetRegistry):
        own = sorted(reg.module_dict)
        others = sorted(set(registry.registered_names(reg)) - set(own))
        out[var] = dict(own=own, others=others)
print(json.dumps(out))
"""


@pytest.fixture(scope='module')
def registered() -> dict[str, dict[str, list[str]]]:
    done = subprocess.run([sys.executable, '-c', REGISTERED_TYPES_SCRIPT], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def documented_types() -> dict[str, tuple[set[str], set[str]]]:
    """Rows of "## Registered types": registry -> (rcnn_det's own names, names in parentheses)."""
    section = CONFIG_GUIDE.read_text().split('\n## Registered types\n', 1)[1].split('\n## ', 1)[0]
    rows = {}
    for registry, types in re.findall(r'^\| `(\w+)` \|(.*)\|\s*$', section, flags=re.M):
        assert registry not in rows, f'docs/config_guide.md: two rows for {registry}'
        in_parens = ' '.join(re.findall(r'\([^)]*\)', types))
        own = re.sub(r'\([^)]*\)', '', types)
        rows[registry] = (set(re.findall(r'`(\w+)`', own)), set(re.findall(r'`(\w+)`', in_parens)))
    return rows


def test_documented_types_parse():
    rows = documented_types()
    assert {'MODELS', 'TASK_UTILS', 'TRANSFORMS'} <= set(rows)
    assert 'RandomChoiceResize' in rows['TRANSFORMS'][1]  # mmcv's, named in parentheses
    assert 'RandomChoiceResize' not in rows['TRANSFORMS'][0]


def test_registered_types_table_lists_exactly_rcnn_dets_own_types(registered):
    rows = documented_types()
    problems = [f'row `{name}`: no such registry in rcnn_det.registry'
                for name in sorted(set(rows) - set(registered))]
    for name, names in sorted(registered.items()):
        own, others = set(names['own']), set(names['others'])
        listed, in_parens = rows.get(name, (set(), set()))
        if own and name not in rows:
            problems.append(f'no row for `{name}`, which registers {sorted(own)}')
            continue
        if own - listed:
            problems.append(f'row `{name}` misses registered {sorted(own - listed)}')
        if listed - own:
            problems.append(f'row `{name}` lists {sorted(listed - own)}, which rcnn_det does '
                            'not register in it')
        if in_parens - others:
            problems.append(f'row `{name}` names {sorted(in_parens - others)} in parentheses '
                            "(as mmengine's/mmcv's), but they are rcnn_det's own or unregistered")
    assert not problems, 'docs/config_guide.md, "Registered types":\n' + '\n'.join(problems)


# ---------------------------------------------------------------- markdown citations

MD_CITATION = re.compile(r'(?<![\w./-])[\w./-]*\w\.md\b')
MD = '.md'  # spelt apart below, so that this file does not cite what it names
# Files of other repositories, cited with their owner: (citing file, cited path).
EXTERNAL_CITATIONS = {('docs/model_zoo.md', f'configs/{name}/README{MD}')  # mmdetection's
                      for name in ('atss', 'deformable_detr')}
SKIPPED_DIRS = {'build', 'dist', 'data', 'work_dirs', 'outputs'}  # ignored by .gitignore


def files_citing() -> list[Path]:
    py = [p for top in ('tests', 'rcnn_det', 'tools', 'configs')
          for p in (REPO_ROOT / top).rglob('*.py')]
    md = [p for p in REPO_ROOT.rglob('*.md')
          if not any(part.startswith('.') or part in SKIPPED_DIRS
                     for part in p.relative_to(REPO_ROOT).parts[:-1])]
    return sorted(py + md)


def cited_files_missing(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """'file:line: cites F' for each markdown file F cited in ``path`` that is neither under
    ``root``, ``root/docs`` nor next to ``path``."""
    rel = path.relative_to(root).as_posix()
    missing = []
    for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
        for cited in MD_CITATION.findall(re.sub(r'\w+://\S+', '', line)):
            if (rel, cited) in EXTERNAL_CITATIONS:
                continue
            if not any((base / cited).is_file() for base in (root, root / 'docs', path.parent)):
                missing.append(f'{rel}:{number}: cites {cited}, not in the repository')
    return missing


def test_citation_finder(tmp_path):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / f'guide{MD}').write_text('')
    (tmp_path / 'tests').mkdir()
    (tmp_path / 'tests' / f'notes{MD}').write_text('')
    citing = tmp_path / 'tests' / 'test_x.py'
    citing.write_text(f'"""See docs/guide{MD}, guide{MD} and notes{MD}."""\n'
                      f'# https://example.org/README{MD} is a link, not a citation\n'
                      f'# DESIGN{MD} section 7; ../docs/guide{MD}\n')
    assert cited_files_missing(citing, tmp_path) == [
        f'tests/test_x.py:3: cites DESIGN{MD}, not in the repository']


def test_cited_markdown_files_exist():
    missing = [m for path in files_citing() for m in cited_files_missing(path)]
    assert not missing, '\n'.join(missing)
