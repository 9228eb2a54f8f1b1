"""mmdetection 3.x checkpoints of Faster / Mask R-CNN R50-FPN load into rcnn_det with strict=True.

The key list below is written from mmdetection's modules (mmdet/models/backbones/resnet.py,
necks/fpn.py, dense_heads/rpn_head.py, roi_heads/bbox_heads/convfc_bbox_head.py,
roi_heads/mask_heads/fcn_mask_head.py), independently of rcnn_det: the backbone part from
torchvision's ResNet-50, whose names mmdetection's ResNet shares, the rest spelled out. A state
dict of random tensors with exactly these keys and shapes is saved as an mmengine checkpoint
(``meta`` + ``state_dict``, the layout of mmdetection's model zoo files) and loaded the way the
tools load checkpoints; every value must land in the parameter of the same name.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

import pytest
import torch
import torchvision
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.runner import Runner, load_checkpoint

from conftest import REPO_ROOT
from rcnn_det.engine import register_checkpoint_safe_globals
from rcnn_det.registry import MODELS

FASTER_RCNN_CONFIG = REPO_ROOT / 'configs/faster_rcnn/faster_rcnn_r50_fpn_1x_coco.py'
MASK_RCNN_CONFIG = REPO_ROOT / 'configs/mask_rcnn/mask_rcnn_r50_fpn_1x_coco.py'
NUM_CLASSES = 80


def mmdet_resnet50_keys() -> list[tuple[str, tuple[int, ...]]]:
    """``backbone.*``: mmdet's ResNet(depth=50) names its stem conv1/bn1, its stages layer1-4 and,
    in each Bottleneck, conv1-3/bn1-3 and downsample.0 (conv) / downsample.1 (BN): torchvision's
    names. Its BN buffers (running_mean/var, num_batches_tracked) are saved too; no fc."""
    state = torchvision.models.resnet50(weights=None).state_dict()
    return [(f'backbone.{k}', tuple(v.shape)) for k, v in state.items() if not k.startswith('fc.')]


def mmdet_fpn_keys(in_channels=(256, 512, 1024, 2048), out=256) -> list:
    """FPN(num_outs=5, no extra convs): ConvModule-wrapped lateral 1x1 and output 3x3 convs."""
    keys = []
    for i, c in enumerate(in_channels):
        keys += [(f'neck.lateral_convs.{i}.conv.weight', (out, c, 1, 1)),
                 (f'neck.lateral_convs.{i}.conv.bias', (out,))]
    for i in range(len(in_channels)):
        keys += [(f'neck.fpn_convs.{i}.conv.weight', (out, out, 3, 3)),
                 (f'neck.fpn_convs.{i}.conv.bias', (out,))]
    return keys


# RPNHead(feat_channels=256), 3 anchors per location, sigmoid objectness.
MMDET_RPN_KEYS = [
    ('rpn_head.rpn_conv.weight', (256, 256, 3, 3)), ('rpn_head.rpn_conv.bias', (256,)),
    ('rpn_head.rpn_cls.weight', (3, 256, 1, 1)), ('rpn_head.rpn_cls.bias', (3,)),
    ('rpn_head.rpn_reg.weight', (12, 256, 1, 1)), ('rpn_head.rpn_reg.bias', (12,)),
]
# Shared2FCBBoxHead: 256 x 7 x 7 -> 1024 -> 1024, 80 classes + background, class-specific boxes.
MMDET_BBOX_HEAD_KEYS = [
    ('roi_head.bbox_head.shared_fcs.0.weight', (1024, 256 * 7 * 7)),
    ('roi_head.bbox_head.shared_fcs.0.bias', (1024,)),
    ('roi_head.bbox_head.shared_fcs.1.weight', (1024, 1024)),
    ('roi_head.bbox_head.shared_fcs.1.bias', (1024,)),
    ('roi_head.bbox_head.fc_cls.weight', (NUM_CLASSES + 1, 1024)),
    ('roi_head.bbox_head.fc_cls.bias', (NUM_CLASSES + 1,)),
    ('roi_head.bbox_head.fc_reg.weight', (4 * NUM_CLASSES, 1024)),
    ('roi_head.bbox_head.fc_reg.bias', (4 * NUM_CLASSES,)),
]
# FCNMaskHead: 4 ConvModule 3x3 convs, a 2x2 stride-2 deconv, 1x1 logits per class.
MMDET_MASK_HEAD_KEYS = [
    key for i in range(4)
    for key in ((f'roi_head.mask_head.convs.{i}.conv.weight', (256, 256, 3, 3)),
                (f'roi_head.mask_head.convs.{i}.conv.bias', (256,)))] + [
    ('roi_head.mask_head.upsample.weight', (256, 256, 2, 2)),
    ('roi_head.mask_head.upsample.bias', (256,)),
    ('roi_head.mask_head.conv_logits.weight', (NUM_CLASSES, 256, 1, 1)),
    ('roi_head.mask_head.conv_logits.bias', (NUM_CLASSES,)),
]


def mmdet_keys(detector: str) -> list[tuple[str, tuple[int, ...]]]:
    keys = mmdet_resnet50_keys() + mmdet_fpn_keys() + MMDET_RPN_KEYS + MMDET_BBOX_HEAD_KEYS
    return keys + MMDET_MASK_HEAD_KEYS if detector == 'mask_rcnn' else keys


def random_state_dict(keys, seed: int = 0) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for name, shape in keys:
        if name.endswith('num_batches_tracked'):
            state[name] = torch.randint(1, 10 ** 6, (), generator=g)   # int64 scalar buffer
        else:
            state[name] = torch.randn(shape, generator=g)
    return state


def save_mmdet_checkpoint(path, state_dict) -> None:
    """The layout of mmdetection 3.x model zoo files (tools/model_converters/publish_model.py
    keeps ``meta`` and ``state_dict``)."""
    classes = tuple(f'class_{i}' for i in range(NUM_CLASSES))
    meta = dict(mmdet_version='3.3.0', mmengine_version='0.10.7', epoch=12, iter=87960, seed=0,
                experiment_name='mask-rcnn_r50_fpn_1x_coco', time='20230101_000000',
                dataset_meta=dict(classes=classes, palette=[(220, 20, 60)] * NUM_CLASSES))
    torch.save(dict(meta=meta, state_dict=state_dict), path)


def build(config) -> torch.nn.Module:
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None  # no ImageNet weights: the checkpoint brings everything
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    return MODELS.build(cfg.model)


@pytest.fixture(scope='module')
def models():
    return dict(faster_rcnn=build(FASTER_RCNN_CONFIG), mask_rcnn=build(MASK_RCNN_CONFIG))


def zeroed(model: torch.nn.Module) -> torch.nn.Module:
    """The shared model with every tensor zeroed, so that a load must bring every value."""
    with torch.no_grad():
        for value in model.state_dict().values():
            value.zero_()
    return model


def assert_values_landed(model: torch.nn.Module, state_dict: dict) -> None:
    ours = model.state_dict()
    assert set(ours) == set(state_dict)
    for key, value in state_dict.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """Both detectors' checkpoints; Mask R-CNN's shares Faster R-CNN's tensors and adds 12."""
    register_checkpoint_safe_globals()  # what tools/test.py does: weights_only-safe loading
    root = tmp_path_factory.mktemp('mmdet_checkpoints')
    states = {'mask_rcnn': random_state_dict(mmdet_keys('mask_rcnn'))}
    states['faster_rcnn'] = OrderedDict(
        (k, v) for k, v in states['mask_rcnn'].items() if not k.startswith('roi_head.mask_head.'))
    paths = {}
    for name, state in states.items():
        paths[name] = root / f'{name}_r50_fpn_1x_coco_mmdet.pth'
        save_mmdet_checkpoint(paths[name], state)
    return paths, states


def test_the_key_lists_have_mmdetections_sizes():
    assert len(mmdet_keys('faster_rcnn')) == 318 + 16 + 6 + 8 == 348
    assert len(mmdet_keys('mask_rcnn')) == 348 + 12
    assert len({k for k, _ in mmdet_keys('mask_rcnn')}) == 360


@pytest.mark.parametrize('detector', ['faster_rcnn', 'mask_rcnn'])
def test_strict_load_with_mmengine(checkpoints, models, detector):
    paths, states = checkpoints
    model = zeroed(models[detector])
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert expected == dict(mmdet_keys(detector))
    checkpoint = load_checkpoint(model, str(paths[detector]), map_location='cpu', strict=True)
    assert checkpoint['meta']['dataset_meta']['classes'][0] == 'class_0'
    assert_values_landed(model, states[detector])


def test_load_from_as_tools_test_does(checkpoints, models, tmp_path):
    """tools/test.py sets cfg.load_from; the Runner loads it before testing (load_or_resume)."""
    paths, states = checkpoints
    model = zeroed(models['mask_rcnn'])
    runner = Runner(model=model, work_dir=str(tmp_path), load_from=str(paths['mask_rcnn']),
                    default_scope='rcnn_det', randomness=dict(seed=0))
    runner.load_or_resume()
    assert_values_landed(runner.model, states['mask_rcnn'])


def test_strict_load_names_a_missing_or_renamed_key(checkpoints, models, tmp_path):
    _, states = checkpoints
    state = OrderedDict(states['faster_rcnn'])
    state['rpn_head.rpn_conv.conv.weight'] = state.pop('rpn_head.rpn_conv.weight')  # misnamed
    del state['roi_head.bbox_head.fc_cls.bias']                                      # missing
    path = tmp_path / 'broken.pth'
    save_mmdet_checkpoint(path, state)
    with pytest.raises(RuntimeError) as error:
        load_checkpoint(models['faster_rcnn'], str(path), map_location='cpu', strict=True)
    message = str(error.value)
    assert 'rpn_head.rpn_conv.conv.weight' in message      # unexpected key
    assert 'rpn_head.rpn_conv.weight' in message and 'roi_head.bbox_head.fc_cls.bias' in message
