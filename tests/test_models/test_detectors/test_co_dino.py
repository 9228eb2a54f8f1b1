"""Co-DINO (configs/co_detr/co_dino_5scale_*): one training iteration of the R50 and the Swin-L
model with every loss key mmdetection logs and gradients everywhere, each inference branch,
soft-NMS at test time, and the encoder's ``with_cp``."""
from __future__ import annotations

import copy

import pytest
import torch
from mmengine.config import Config

from tests.conftest import REPO_ROOT, build_initialised
from tests.test_models.test_detectors.test_dino import dino_loss_keys, make_batch, total_loss

CONFIGS = REPO_ROOT / 'configs' / 'co_detr'
R50_LSJ = CONFIGS / 'co_dino_5scale_r50_lsj_8xb2_1x_coco.py'
SWIN_L = CONFIGS / 'co_dino_5scale_swin_l_16xb1_1x_coco.py'


def co_dino_loss_keys(num_dec_layers: int = 6) -> set[str]:
    """DINO's keys, the auxiliary heads' own (the Faster R-CNN's suffixed 0, the ATSS head's
    1) and the decoder's losses on each auxiliary head's positive queries."""
    layers = [''] + [f'd{k}.' for k in range(num_dec_layers - 1)]
    aux_heads = {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls0', 'acc0', 'loss_bbox0',
                 'loss_cls1', 'loss_bbox1', 'loss_centerness1'}
    positive_queries = {f'{p}loss_{n}_aux{k}' for p in layers for n in ('cls', 'bbox', 'iou')
                        for k in (0, 1)}
    return dino_loss_keys(num_dec_layers) | aux_heads | positive_queries


def small_input_cfg(path, size: int = 64) -> Config:
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg = None
    for augment in cfg.model.data_preprocessor.get('batch_augments') or []:
        augment.size = (size, size)
    return cfg


@pytest.fixture(scope='module')
def co_dino_r50():
    return build_initialised(small_input_cfg(R50_LSJ).model)


def check_one_iteration(model, data):
    losses = model(**data, mode='loss')
    assert set(losses) == co_dino_loss_keys()
    for name, value in losses.items():
        values = value if isinstance(value, list) else [value]
        assert all(torch.isfinite(v).all() for v in values), name
    model.zero_grad()
    total_loss(losses).backward()
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_r50_one_training_iteration_every_loss_key_and_gradient(co_dino_r50):
    model = co_dino_r50.train()
    data = make_batch(model, [(64, 56), (48, 64)], [3, 1])
    # LSJ: BatchFixedSizePad pads the batch to the configured size, and use_lsj makes the
    # padded canvas the image
    assert data['inputs'].shape[-2:] == (64, 64)
    assert check_one_iteration(model, data) == []


def test_r50_a_batch_without_objects_trains(co_dino_r50):
    model = co_dino_r50.train()
    losses = model(**make_batch(model, [(64, 64), (64, 64)], [0, 0]), mode='loss')
    values = [x for v in losses.values() for x in (v if isinstance(v, list) else [v])]
    assert all(torch.isfinite(v).all() for v in values)


@pytest.mark.parametrize('eval_module', ['detr', 'one-stage', 'two-stage'])
def test_each_eval_module_predicts_in_the_original_frame(co_dino_r50, eval_module):
    model = co_dino_r50.eval()
    model.eval_module = eval_module
    data = make_batch(model, [(64, 64)], [1], training=False)
    try:
        with torch.no_grad():
            pred = model(**data, mode='predict')[0].pred_instances
    finally:
        model.eval_module = 'detr'
    assert 0 < len(pred) <= (300 if eval_module == 'detr' else 100)
    assert pred.scores[:-1].ge(pred.scores[1:]).all()
    assert pred.bboxes.min() >= 0 and pred.bboxes.max() <= 128   # the original is 128 x 128


def test_query_head_applies_soft_nms_at_test_time(co_dino_r50):
    """test_cfg[0].nms = soft_nms: scores decay where boxes of a class overlap, so the result
    differs from the plain top-k pairs, and no box is dropped above min_score."""
    head = co_dino_r50.query_head
    assert head.nms is not None and head.nms.type == 'soft_nms'
    gen = torch.Generator().manual_seed(0)
    cls_scores = torch.randn(1, 20, 80, generator=gen) - 4
    cls_scores[..., 3] += 8   # every query's best pair is class 3, and they overlap
    boxes = torch.full((1, 20, 4), 0.5)
    boxes[..., 2:] = 0.2 + 0.01 * torch.rand(1, 20, 2, generator=gen)   # heavily overlapping
    metas = [dict(img_shape=(64, 64))]
    nms = head.nms
    try:
        with_nms = head.predict_by_feat(cls_scores, boxes, metas)[0]
        head.nms = None
        plain = head.predict_by_feat(cls_scores, boxes, metas)[0]
    finally:
        head.nms = nms
    assert len(plain) == 300 and (plain.labels[:20] == 3).all()
    # the best pair keeps its score; the other class-3 pairs decay (linear: 1 - IoU)
    assert with_nms.scores[0] == plain.scores[0]
    decayed = with_nms.scores[with_nms.labels == 3][1:]
    assert len(decayed) > 0 and (decayed < plain.scores[1:20].min()).all()


def test_encoder_with_cp_gives_the_same_outputs_and_gradients():
    """with_cp layers recompute their activations in the backward pass: same numbers."""
    cfg = copy.deepcopy(small_input_cfg(R50_LSJ).model.query_head.transformer.encoder)
    cfg.num_layers = 2
    attn = cfg.transformerlayers.attn_cfgs
    attn.update(embed_dims=32, num_heads=4, num_levels=2, num_points=2)
    cfg.transformerlayers.feedforward_channels = 64
    cfg.transformerlayers.batch_first = True
    results, calls = [], []
    for with_cp in (0, 2):
        encoder = build_initialised(dict(cfg, with_cp=with_cp)).train()
        count = [0]
        encoder.layers[1].ffns[0].register_forward_hook(
            lambda *_: count.__setitem__(0, count[0] + 1))
        calls.append(count)
        gen = torch.Generator().manual_seed(0)
        query = torch.randn(2, 60, 32, generator=gen, requires_grad=True)
        ref = torch.rand(2, 60, 2, 2, generator=gen)
        out = encoder(query, query_pos=torch.randn(2, 60, 32, generator=gen),
                      reference_points=ref, spatial_shapes=torch.tensor([[6, 8], [3, 4]]),
                      level_start_index=torch.tensor([0, 48]))
        out.square().sum().backward()
        results.append((out.detach(), query.grad,
                        [p.grad.clone() for p in encoder.parameters()]))
    # the checkpointed layer ran again in the backward pass
    assert [c[0] for c in calls] == [1, 2]
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    for a, b in zip(results[0][2], results[1][2]):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_swin_l_one_training_iteration_every_loss_key_and_gradient():
    cfg = small_input_cfg(SWIN_L)
    model = build_initialised(cfg.model).train()
    assert type(model.backbone).__name__ == 'SwinTransformer'
    data = make_batch(model, [(64, 64), (64, 48)], [2, 1])
    missing = check_one_iteration(model, data)
    # Swin-L's 4th-stage output norm feeds the neck; every trainable parameter gets a gradient
    assert missing == []
