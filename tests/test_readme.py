"""The README's quick start is what CI runs, and the files it names exist."""
import re

from conftest import REPO_ROOT


def bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r'```bash\n(.*?)```', text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / 'README.md').read_text()
    quick_start = readme.split('## Quick start', 1)[1].split('\n## ', 1)[0]
    demo_cmd, test_cmd = bash_blocks(quick_start)[:2]
    ci_lines = [line for line in (REPO_ROOT / '.ci/run').read_text().splitlines()
                if line and not line.startswith(('#', 'set ', 'cd '))]
    assert ci_lines == [test_cmd]
    assert demo_cmd == ('pip install -e . && python tools/train.py '
                        'configs/demo/faster_rcnn_r18_fpn_shapes.py')
    assert (REPO_ROOT / 'configs/demo/faster_rcnn_r18_fpn_shapes.py').is_file()


def test_readme_paths_exist():
    readme = (REPO_ROOT / 'README.md').read_text()
    for path in set(re.findall(r'(?:configs|tools|docs)/[\w./-]+\.(?:py|sh|md)', readme)):
        assert (REPO_ROOT / path).is_file(), path
