"""Registry: mmdet type names build; an unknown type names the closest registered types."""
from __future__ import annotations

import pytest
from mmengine.registry import DefaultScope

import rcnn_det.models  # noqa: F401  (registers every model part)
from rcnn_det.models.backbones import ResNet
from rcnn_det.models.task_modules import MaxIoUAssigner
from rcnn_det.registry import MODELS, TASK_UTILS, registered_names


@pytest.mark.parametrize('registry, bad, close', [
    (MODELS, 'ResNet50', 'ResNet'),
    (MODELS, 'RPNhead', 'RPNHead'),
    (MODELS, 'Shared2FCBoxHead', 'Shared2FCBBoxHead'),
    (TASK_UTILS, 'MaxIouAssigner', 'MaxIoUAssigner'),
])
def test_unknown_type_names_close_registered_types(registry, bad, close):
    with pytest.raises(KeyError) as info:
        registry.build(dict(type=bad))
    message = str(info.value)
    assert f"'{bad}'" in message and f"'{close}'" in message
    assert registry.name in message


def test_unknown_type_without_close_names():
    with pytest.raises(KeyError) as info:
        MODELS.build(dict(type='Qwxzv'))
    assert 'Did you mean' not in str(info.value)


def test_unknown_type_under_rcnn_det_default_scope():
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        with pytest.raises(KeyError, match="'FPN'"):
            MODELS.build(dict(type='FPNN', in_channels=[4], out_channels=4, num_outs=1))


def test_known_types_build_and_are_listed():
    assert MODELS.get('ResNet') is ResNet
    assert isinstance(TASK_UTILS.build(dict(type='MaxIoUAssigner', pos_iou_thr=0.5,
                                            neg_iou_thr=0.5)), MaxIoUAssigner)
    names = registered_names(MODELS)
    for name in ('ResNet', 'FPN', 'RPNHead', 'StandardRoIHead', 'Shared2FCBBoxHead',
                 'SingleRoIExtractor', 'CrossEntropyLoss', 'L1Loss', 'DetDataPreprocessor',
                 'RoIAlign'):
        assert name in names
    assert MODELS.scope == 'rcnn_det' and TASK_UTILS.scope == 'rcnn_det'
