"""Co-Deformable-DETR R50 (configs/co_detr/co_deformable_detr_r50_1x_coco.py): the official
state-dict names, one training iteration with every loss key, and each inference branch."""
from __future__ import annotations

import logging

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData

from rcnn_det.registry import MODELS
from rcnn_det.structures import DetDataSample
from tests.conftest import REPO_ROOT

CONFIG = REPO_ROOT / 'configs' / 'co_detr' / 'co_deformable_detr_r50_1x_coco.py'

# docs/co_detr.md, "Checkpoint names, shapes and counts": counts of the official model, and a
# sample of its keys with shapes.
NUM_KEYS = 676
NUM_PARAMS, NUM_TRAINABLE = 65_129_894, 64_854_374
PER_MODULE = dict(backbone=(23_508_032, 318), neck=(5_638_144, 12),
                  query_head=(19_698_766, 315), rpn_head=(601_645, 6),
                  roi_head=(14_306_705, 8), bbox_head=(1_376_602, 17))
OFFICIAL_KEYS = {
    'backbone.conv1.weight': (64, 3, 7, 7),
    'backbone.layer4.0.downsample.1.running_var': (2048,),
    'neck.convs.0.conv.weight': (256, 512, 1, 1),
    'neck.convs.2.gn.weight': (256,),
    'neck.extra_convs.0.conv.weight': (256, 2048, 3, 3),
    'query_head.transformer.level_embeds': (4, 256),
    'query_head.transformer.encoder.layers.0.attentions.0.sampling_offsets.weight': (256, 256),
    'query_head.transformer.encoder.layers.5.attentions.0.attention_weights.weight': (128, 256),
    'query_head.transformer.encoder.layers.3.ffns.0.layers.0.0.weight': (2048, 256),
    'query_head.transformer.encoder.layers.3.ffns.0.layers.1.bias': (256,),
    'query_head.transformer.encoder.layers.1.norms.1.weight': (256,),
    'query_head.transformer.decoder.layers.0.attentions.0.attn.in_proj_weight': (768, 256),
    'query_head.transformer.decoder.layers.2.attentions.0.attn.out_proj.weight': (256, 256),
    'query_head.transformer.decoder.layers.5.attentions.1.value_proj.weight': (256, 256),
    'query_head.transformer.decoder.layers.4.norms.2.bias': (256,),
    'query_head.transformer.enc_output.weight': (256, 256),
    'query_head.transformer.enc_output_norm.weight': (256,),
    'query_head.transformer.pos_trans.weight': (512, 512),
    'query_head.transformer.pos_trans_norm.bias': (512,),
    'query_head.transformer.head_pos_embed.weight': (2, 1),
    'query_head.transformer.aux_pos_trans.1.weight': (512, 512),
    'query_head.transformer.aux_pos_trans_norm.0.weight': (512,),
    'query_head.transformer.pos_feats_trans.1.weight': (256, 256),
    'query_head.transformer.pos_feats_norm.0.bias': (256,),
    'query_head.downsample.0.weight': (256, 256, 3, 3),
    'query_head.downsample.1.weight': (256,),
    'query_head.cls_branches.6.weight': (80, 256),
    'query_head.reg_branches.6.4.weight': (4, 256),
    'query_head.reg_branches.0.2.bias': (256,),
    'query_head.query_embedding.weight': (300, 256),
    'rpn_head.rpn_conv.weight': (256, 256, 3, 3),
    'rpn_head.rpn_cls.weight': (9, 256, 1, 1),
    'rpn_head.rpn_reg.weight': (36, 256, 1, 1),
    'roi_head.0.bbox_head.shared_fcs.0.weight': (1024, 12544),
    'roi_head.0.bbox_head.fc_cls.weight': (81, 1024),
    'roi_head.0.bbox_head.fc_reg.weight': (320, 1024),
    'bbox_head.0.cls_convs.0.conv.weight': (256, 256, 3, 3),
    'bbox_head.0.reg_convs.0.gn.bias': (256,),
    'bbox_head.0.atss_cls.weight': (80, 256, 3, 3),
    'bbox_head.0.atss_reg.weight': (4, 256, 3, 3),
    'bbox_head.0.atss_centerness.weight': (1, 256, 3, 3),
    'bbox_head.0.scales.4.scale': (),
}
ABSENT_KEYS = ('query_head.transformer.reference_points.weight', 'query_head.input_proj.0.weight',
               'query_head.fc_cls.weight', 'neck.convs.0.conv.bias')


def expected_loss_keys() -> set[str]:
    """docs/co_detr.md, "Loss keys of one training iteration": the 65 keys of one step."""
    query = {f'{p}loss_{n}' for p in ['', 'enc_', 'd0.', 'd1.', 'd2.', 'd3.', 'd4.']
             for n in ('cls', 'bbox', 'iou')}
    aux_heads = {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls0', 'acc0', 'loss_bbox0', 'loss_cls1',
                 'loss_bbox1', 'loss_centerness1'}
    positive_queries = {f'{p}loss_{n}_aux{k}' for p in ['', 'd0.', 'd1.', 'd2.', 'd3.', 'd4.']
                        for n in ('cls', 'bbox', 'iou') for k in (0, 1)}
    return query | aux_heads | positive_queries


@pytest.fixture(scope='module')
def model():
    cfg = Config.fromfile(CONFIG)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    detector = MODELS.build(cfg.model)
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    detector.init_weights()
    return detector


def batch(with_second_gt: bool = False):
    """Two images padded to 128 x 160; the second has no object unless asked."""
    samples = []
    for i, (h, w) in enumerate([(128, 160), (112, 144)]):
        sample = DetDataSample(metainfo=dict(
            img_shape=(h, w), ori_shape=(2 * h, 2 * w), scale_factor=(0.5, 0.5),
            pad_shape=(h, w), batch_input_shape=(128, 160)))
        boxes = torch.tensor([[10., 20., 90., 100.], [60., 30., 150., 120.]])
        labels = torch.tensor([3, 77])
        if i == 1 and not with_second_gt:
            boxes, labels = boxes[:0], labels[:0]
        sample.gt_instances = InstanceData(bboxes=boxes, labels=labels)
        samples.append(sample)
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 128, 160, generator=g), samples


def test_state_dict_has_the_official_names_shapes_and_sizes(model):
    state = model.state_dict()
    assert len(state) == NUM_KEYS
    for key, shape in OFFICIAL_KEYS.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    for key in ABSENT_KEYS:
        assert key not in state
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == NUM_PARAMS
    assert sum(p.numel() for p in params.values() if p.requires_grad) == NUM_TRAINABLE
    for module, (count, entries) in PER_MODULE.items():
        assert sum(p.numel() for k, p in params.items() if k.startswith(module + '.')) == count
        assert sum(1 for k in state if k.startswith(module + '.')) == entries


def test_one_training_iteration_every_loss_key_and_gradient(model):
    model.train()
    model.zero_grad()
    inputs, samples = batch()
    torch.manual_seed(0)
    losses = model(inputs, samples, mode='loss')
    assert set(losses) == expected_loss_keys() and len(losses) == 65
    total = 0
    for name, value in losses.items():
        values = value if isinstance(value, list) else [value]
        assert all(torch.isfinite(v).all() for v in values), name
        if 'loss' in name:
            total = total + sum(values)
    total.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    for prefix in ('backbone.layer2.', 'backbone.layer4.', 'neck.convs.', 'neck.extra_convs.',
                   'query_head.transformer.encoder.', 'query_head.transformer.decoder.',
                   'query_head.transformer.aux_pos_trans.0.',
                   'query_head.transformer.aux_pos_trans.1.',
                   'query_head.transformer.pos_feats_trans.0.',
                   'query_head.transformer.pos_feats_trans.1.',
                   'query_head.transformer.head_pos_embed.', 'query_head.transformer.enc_output.',
                   'query_head.downsample.', 'query_head.cls_branches.6.',
                   'query_head.query_embedding.', 'rpn_head.', 'roi_head.0.', 'bbox_head.0.'):
        reached = [g for name, g in grads.items() if name.startswith(prefix) and g is not None]
        assert reached and any(g.abs().sum() > 0 for g in reached), prefix
    # the frozen stem and layer1 get nothing
    assert all(g is None for name, g in grads.items() if name.startswith('backbone.layer1.'))


def test_auxiliary_losses_train_the_encoder_and_backbone(model):
    """x5 is the encoder memory, not detached: an auxiliary head's loss alone reaches them."""
    model.train()
    model.zero_grad()
    inputs, samples = batch(with_second_gt=True)
    losses = model(inputs, samples, mode='loss')
    sum(losses['loss_bbox1']).backward()
    for name, p in model.named_parameters():
        if name.startswith(('query_head.transformer.encoder.layers.5.', 'neck.convs.1.',
                            'backbone.layer3.0.downsample.0.')):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        if name.startswith(('query_head.transformer.decoder.', 'roi_head.')):
            assert p.grad is None or p.grad.abs().sum() == 0, name


@pytest.mark.parametrize('eval_module', ['detr', 'one-stage', 'two-stage'])
def test_each_eval_module_predicts_in_the_original_frame(model, eval_module):
    model.eval()
    inputs, samples = batch()
    model.eval_module = eval_module
    try:
        with torch.no_grad():
            results = model(inputs, samples, mode='predict')
    finally:
        model.eval_module = 'detr'
    for sample in results:
        pred = sample.pred_instances
        h, w = sample.metainfo['ori_shape']
        assert len(pred) == 100 and pred.labels.max() < 80
        assert (pred.bboxes >= 0).all()
        assert (pred.bboxes[:, 0::2] <= w + 1e-3).all() and (pred.bboxes[:, 1::2] <= h + 1e-3).all()
        # rescaled: boxes extend past the network input's frame
        assert pred.bboxes[:, 2].max() > sample.metainfo['img_shape'][1] * 0.5


def test_unknown_eval_module_and_missing_aux_head_are_clear():
    cfg = Config.fromfile(CONFIG)
    with pytest.raises(ValueError, match="eval_module must be one of"):
        MODELS.build(dict(cfg.model, eval_module='rpn'))
    with pytest.raises(TypeError, match='model.train_cfg is a list'):
        MODELS.build(dict(cfg.model, train_cfg=dict(rpn=None)))
