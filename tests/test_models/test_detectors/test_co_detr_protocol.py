"""Co-DETR's auxiliary-head protocol on the demo model: the third auxiliary head that
docs/co_detr.md ("Adding an auxiliary head") shows, the build-time checks naming the head at
fault, and ``with_attn_mask=False`` at test time."""
from __future__ import annotations

import copy
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.structures import InstanceData

from rcnn_det.models.auxiliary_heads import AuxiliaryHead
from rcnn_det.registry import MODELS
from rcnn_det.structures import DetDataSample
from tests.conftest import REPO_ROOT, build_initialised

DEMO = REPO_ROOT / 'configs' / 'demo' / 'co_deformable_detr_r18_shapes.py'
DOC = REPO_ROOT / 'docs' / 'co_detr.md'


@pytest.fixture(scope='module')
def toy_head_class():
    """Executes the documented example, which registers CentrePointAuxHead."""
    text = DOC.read_text()
    section = text[text.index('### Adding an auxiliary head'):]
    code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
    if 'CentrePointAuxHead' not in MODELS.module_dict:
        exec(compile(code, str(DOC), 'exec'), {'__name__': 'co_detr_doc_example'})
    return MODELS.get('CentrePointAuxHead')


def demo_model_cfg() -> dict:
    return copy.deepcopy(Config.fromfile(DEMO).model.to_dict())


def with_third_head(cfg: dict) -> dict:
    cfg['bbox_head'].append(dict(type='CentrePointAuxHead', num_classes=4, in_channels=128))
    cfg['query_head']['transformer']['num_co_heads'] = 3
    cfg['train_cfg'].append(dict())
    cfg['test_cfg'].append(dict())
    return cfg


def samples(batch_hw=(64, 80), img_shapes=((64, 80), (48, 72))):
    out = []
    for i, shape in enumerate(img_shapes):
        sample = DetDataSample(metainfo=dict(img_shape=shape, pad_shape=batch_hw,
                                             batch_input_shape=batch_hw, ori_shape=shape,
                                             scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=torch.tensor([[6., 8., 40., 44.]]) + i,
                                           labels=torch.tensor([2]))
        out.append(sample)
    return out


def test_a_third_auxiliary_head_is_one_class_and_one_config_entry(toy_head_class):
    assert issubclass(toy_head_class, AuxiliaryHead)
    model = build_initialised(with_third_head(demo_model_cfg()))
    assert len(model.aux_heads) == 3 and isinstance(model.bbox_head[1], toy_head_class)
    losses = model.loss(torch.randn(2, 3, 64, 80), samples())
    assert 'loss_centre2' in losses
    assert {f'{p}loss_{n}_aux2' for p in ('', 'd0.', 'd1.') for n in ('cls', 'bbox', 'iou')} \
        <= set(losses)
    assert all(torch.isfinite(v).all() for k, v in losses.items() if not isinstance(v, list))
    total = sum(v if not isinstance(v, list) else sum(v) for k, v in losses.items()
                if 'loss' in k)
    total.backward()
    # the new head trains, and so does the query head's third positive-query branch
    assert model.bbox_head[1].logits.weight.grad.abs().sum() > 0
    assert model.query_head.transformer.aux_pos_trans[2].weight.grad.abs().sum() > 0


def test_num_co_heads_must_count_the_auxiliary_heads(toy_head_class):
    cfg = with_third_head(demo_model_cfg())
    cfg['query_head']['transformer']['num_co_heads'] = 2
    with pytest.raises(ValueError, match=r'num_co_heads=2.*3 auxiliary heads.*'
                                         r'bbox_head\[1\] \(CentrePointAuxHead\) would have no '
                                         r'branch'):
        MODELS.build(cfg)
    cfg['query_head']['transformer']['num_co_heads'] = 4
    with pytest.raises(ValueError, match='1 branch'):
        MODELS.build(cfg)
    cfg['with_pos_coord'] = False      # no positive queries: any number of branches will do
    MODELS.build(cfg)


def test_every_auxiliary_head_needs_its_cfg_entries(toy_head_class):
    cfg = with_third_head(demo_model_cfg())
    cfg['train_cfg'].pop()
    with pytest.raises(ValueError, match=r'bbox_head\[1\] \(CentrePointAuxHead\) has no '
                                         r'model.train_cfg entry.*train_cfg\[3\]'):
        MODELS.build(cfg)
    cfg = with_third_head(demo_model_cfg())
    cfg['test_cfg'].pop()
    with pytest.raises(ValueError, match=r'model.test_cfg\[3\]'):
        MODELS.build(cfg)
    cfg = demo_model_cfg()       # an inference-only model has no train_cfg at all
    cfg['train_cfg'] = None
    assert len(MODELS.build(cfg).aux_heads) == 2


def test_auxiliary_heads_must_implement_the_protocol():
    cfg = demo_model_cfg()
    cfg['bbox_head'][0]['type'] = 'ATSSHead'
    with pytest.raises(TypeError, match=r'bbox_head\[0\] \(ATSSHead\) is not an auxiliary head'):
        MODELS.build(cfg)


def test_without_attention_mask_the_padded_batch_is_the_image_at_test_time_too():
    cfg = demo_model_cfg()
    cfg['with_attn_mask'] = False
    model = build_initialised(cfg).eval()
    inputs = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        out = model.predict(inputs, samples(), rescale=False)
        cfg['with_attn_mask'] = True
        padded = samples(img_shapes=((64, 80), (64, 80)))
        reference = build_initialised(cfg).eval().predict(inputs, padded, rescale=False)
    assert [s.img_shape for s in out] == [(64, 80), (64, 80)]
    for got, expected in zip(out, reference):
        assert torch.equal(got.pred_instances.bboxes, expected.pred_instances.bboxes)
        assert torch.equal(got.pred_instances.scores, expected.pred_instances.scores)
    # image 1 (48 x 72 of the 64 x 80 batch) has boxes beyond its own frame
    assert (out[1].pred_instances.bboxes[:, 2] > 72).any()
