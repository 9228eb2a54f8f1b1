"""torchvision's Faster/Mask R-CNN R50-FPN, converted, predict in rcnn_det what they predict in
torchvision (configs/torchvision/, tools/model_converters/torchvision_to_rcnn_det.py)."""
from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest
import torch
import torchvision
from mmengine.config import Config

from rcnn_det.registry import MODELS, TRANSFORMS
from tests.conftest import PYTHON, REPO_ROOT, run_tool

CONVERTER = REPO_ROOT / 'tools' / 'model_converters' / 'torchvision_to_rcnn_det.py'
MASK_CONFIG = REPO_ROOT / 'configs' / 'torchvision' / 'maskrcnn_resnet50_fpn_coco.py'
FASTER_CONFIG = REPO_ROOT / 'configs' / 'torchvision' / 'fasterrcnn_resnet50_fpn_coco.py'
NUM_OUTPUTS = 6                 # torchvision's num_classes: background + 5
MIN_SIZE, MAX_SIZE = 320, 480   # smaller than 800/1333 to keep the test fast; same code path


def load_converter():
    spec = importlib.util.spec_from_file_location('torchvision_to_rcnn_det', CONVERTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_rcnn_det(config, num_classes: int, **test_resize):
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    cfg.model.roi_head.bbox_head.num_classes = num_classes
    if 'mask_head' in cfg.model.roi_head:
        cfg.model.roi_head.mask_head.num_classes = num_classes
    pipeline = [dict(t, **test_resize) if t['type'] == 'TorchvisionResize' else t
                for t in cfg.test_pipeline if t['type'] != 'LoadAnnotations']
    return MODELS.build(cfg.model).eval(), [TRANSFORMS.build(t) for t in pipeline]


def torchvision_mask_rcnn() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_OUTPUTS, min_size=MIN_SIZE,
        max_size=MAX_SIZE).eval()
    with torch.no_grad():
        # Random weights give near-uniform class scores, below the 0.05 threshold: sharpen them.
        model.roi_heads.box_predictor.cls_score.weight.mul_(20)
        # and mask logits that saturate: many pasted pixels would then sit exactly on 0.5,
        # interpolated half way between a 1 and the zero padding, where the last bit decides.
        predictor = model.roi_heads.mask_predictor.mask_fcn_logits
        predictor.weight.mul_(0.05)
        predictor.bias.normal_(0, 1)
    return model


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    """(torchvision model, rcnn_det model loaded from the converted checkpoint, pipeline)."""
    tmp = tmp_path_factory.mktemp('torchvision')
    tv_model = torchvision_mask_rcnn()
    src, dst = tmp / 'maskrcnn_tv.pth', tmp / 'maskrcnn_rcnn_det.pth'
    torch.save(tv_model.state_dict(), src)
    run_tool([PYTHON, str(CONVERTER), str(src), str(dst)], cwd=tmp)
    model, pipeline = build_rcnn_det(MASK_CONFIG, NUM_OUTPUTS - 1, min_size=MIN_SIZE,
                                     max_size=MAX_SIZE)
    checkpoint = torch.load(dst, map_location='cpu', weights_only=True)
    model.load_state_dict(checkpoint['state_dict'], strict=True)
    return tv_model, model, pipeline, tmp


@pytest.mark.parametrize('size', [(240, 330), (300, 260)])
def test_predictions_equal_torchvision(converted, size):
    tv_model, model, pipeline, tmp = converted
    rng = np.random.default_rng(size[0])
    img = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), dtype=np.uint8), (0, 0), 3)
    path = tmp / f'img_{size[0]}.png'
    cv2.imwrite(str(path), img)
    data = dict(img_path=str(path), img_id=0)
    for transform in pipeline:
        data = transform(data)
    batch = model.data_preprocessor(dict(inputs=[data['inputs']],
                                         data_samples=[data['data_samples']]), False)
    with torch.no_grad():
        ours = model(**batch, mode='predict')[0].pred_instances
        rgb = torch.from_numpy(img[..., ::-1].copy()).permute(2, 0, 1).float() / 255
        theirs = tv_model([rgb])[0]
    assert len(ours) == len(theirs['boxes']) == 100      # the test is not vacuous
    mine, its = ours.scores.argsort(descending=True), theirs['scores'].argsort(descending=True)
    assert torch.equal(ours.labels[mine] + 1, theirs['labels'][its])    # background first there
    torch.testing.assert_close(ours.scores[mine], theirs['scores'][its], atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.bboxes[mine], theirs['boxes'][its], atol=1e-3, rtol=0)
    tv_probs = theirs['masks'][its, 0]
    tv_masks = tv_probs >= 0.5
    assert ours.masks.shape == tv_masks.shape == (100, *size)
    assert tv_masks.sum() > 1000
    # rcnn_det folds the frozen BNs into their convs, so features differ from torchvision's in
    # the last float bits: a pixel may flip only where torchvision's probability is 0.5 to
    # within rounding (measured: 1 pixel of 85k, 1.8e-7 from 0.5).
    differ = ours.masks[mine] != tv_masks
    assert differ.sum() <= 10
    assert ((tv_probs[differ] - 0.5).abs() < 1e-5).all()


def test_old_torchvision_key_layout_converts_the_same():
    """The published weights predate torchvision's Conv2dNormActivation wrappers and use
    FrozenBatchNorm2d (no num_batches_tracked): both layouts give the same checkpoint."""
    converter = load_converter()
    torch.manual_seed(0)
    state = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3).state_dict()
    old = {}
    for key, value in state.items():
        if key.endswith('num_batches_tracked'):
            continue
        key = key.replace('rpn.head.conv.0.0.', 'rpn.head.conv.')
        for i in range(4):
            key = key.replace(f'inner_blocks.{i}.0.', f'inner_blocks.{i}.')
            key = key.replace(f'layer_blocks.{i}.0.', f'layer_blocks.{i}.')
            key = key.replace(f'mask_head.{i}.0.', f'mask_head.mask_fcn{i + 1}.')
        old[key] = value
    new_converted, old_converted = converter.convert(state), converter.convert(old)
    assert list(new_converted) == list(old_converted)
    for key in new_converted:
        assert torch.equal(new_converted[key], old_converted[key]), key


def test_faster_rcnn_converts_and_loads_strictly():
    converter = load_converter()
    state = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=4).state_dict()
    model, _ = build_rcnn_det(FASTER_CONFIG, 3)
    converted = converter.convert(state)
    model.load_state_dict(converted, strict=True)
    # background row 0 moves last; the background's 4 regression rows are dropped
    fc_cls = converted['roi_head.bbox_head.fc_cls.weight']
    assert torch.equal(fc_cls[:3], state['roi_heads.box_predictor.cls_score.weight'][1:])
    assert torch.equal(fc_cls[3], state['roi_heads.box_predictor.cls_score.weight'][0])
    assert torch.equal(converted['roi_head.bbox_head.fc_reg.weight'],
                       state['roi_heads.box_predictor.bbox_pred.weight'][4:])


def test_coco_categories_keep_the_80_used_ids(tmp_path):
    converter = load_converter()
    state = {'roi_heads.box_predictor.cls_score.weight': torch.arange(91.)[:, None],
             'roi_heads.box_predictor.cls_score.bias': torch.arange(91.),
             'roi_heads.box_predictor.bbox_pred.weight': torch.arange(91. * 4)[:, None],
             'roi_heads.box_predictor.bbox_pred.bias': torch.arange(91. * 4)}
    src, dst = tmp_path / 'coco_tv.pth', tmp_path / 'coco_rcnn_det.pth'
    torch.save(state, src)
    proc = run_tool([PYTHON, str(CONVERTER), str(src), str(dst), '--coco-categories'],
                    cwd=tmp_path)
    assert '80 classes' in proc.stdout
    out = torch.load(dst, weights_only=True)['state_dict']
    ids = torch.tensor(converter.COCO_CATEGORY_IDS, dtype=torch.float)
    assert len(ids) == 80 and len(set(converter.COCO_CATEGORY_IDS)) == 80
    assert torch.equal(out['roi_head.bbox_head.fc_cls.bias'], torch.cat([ids, ids.new_zeros(1)]))
    assert torch.equal(out['roi_head.bbox_head.fc_reg.bias'].view(80, 4)[:, 0], ids * 4)


def test_unknown_key_is_named():
    converter = load_converter()
    with pytest.raises(KeyError, match='roi_heads.keypoint_head.0.weight'):
        converter.rename('roi_heads.keypoint_head.0.weight')


def test_torchvision_resize_matches_torchvision_transform():
    """Size rule (floor), float bilinear image and box ratios of GeneralizedRCNNTransform."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from rcnn_det.datasets.transforms import TorchvisionResize
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (333, 517, 3), dtype=np.uint8)
    boxes = np.array([[10.5, 20.25, 300.0, 330.0], [0, 0, 517, 333]], dtype=np.float32)
    masks = np.zeros((2, 333, 517), dtype=np.uint8)
    masks[0, 20:330, 10:300] = 1
    results = TorchvisionResize(min_size=800, max_size=1333)(
        dict(img=img.copy(), gt_bboxes=boxes.copy(), gt_masks=masks.copy()))
    transform = GeneralizedRCNNTransform(800, 1333, [0., 0., 0.], [1., 1., 1.]).eval()
    tensor = torch.from_numpy(img).permute(2, 0, 1).float()
    target = dict(boxes=torch.from_numpy(boxes), masks=torch.from_numpy(masks))
    image, target = transform.resize(tensor, target)
    assert results['img_shape'] == tuple(image.shape[-2:]) == (800, 1242)
    torch.testing.assert_close(torch.from_numpy(results['img']).permute(2, 0, 1), image,
                               atol=1e-3, rtol=0)
    assert torch.equal(torch.from_numpy(results['gt_bboxes']), target['boxes'])
    assert torch.equal(torch.from_numpy(results['gt_masks']), target['masks'])
    assert results['scale_factor'] == (1242 / 517, 800 / 333)
