import pytest
from mmengine.config import Config

from rcnn_det.engine import check_config


def test_misspelled_top_level_key_names_the_closest():
    cfg = Config(dict(model=dict(), train_dataloder=dict(), train_cfg=dict(),
                      optim_wrapper=dict()))
    with pytest.raises(KeyError, match="'train_dataloder'.*did you mean 'train_dataloader'"):
        check_config(cfg, 'my_config.py')


def test_missing_required_key_is_named():
    cfg = Config(dict(model=dict(), train_dataloader=dict(), train_cfg=dict()))
    with pytest.raises(KeyError, match="my_config.py: missing 'optim_wrapper'"):
        check_config(cfg, 'my_config.py')


def test_variables_and_pipelines_are_allowed():
    cfg = Config(dict(model=dict(), train_dataloader=dict(), train_cfg=dict(),
                      optim_wrapper=dict(), data_root='data/', test_pipeline=[],
                      train_pipeline=[], classes=('a',), max_iters=3))
    check_config(cfg, 'my_config.py')


def test_real_configs_pass():
    from conftest import REPO_ROOT
    for path in sorted((REPO_ROOT / 'configs').glob('*/*.py')):
        if '_base_' in path.parts:
            continue
        check_config(Config.fromfile(path), str(path))
