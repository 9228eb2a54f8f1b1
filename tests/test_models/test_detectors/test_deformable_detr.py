"""Deformable DETR: the mmdet 3.x configs build the official-named modules, the mmdet 3.x key
map, one training iteration and one prediction of the R50 two-stage config, reference points
inside (0, 1), the head's losses against a hand-written matching and its top-k predictions."""
from __future__ import annotations

import logging

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData

from conftest import REPO_ROOT
from rcnn_det.models.detectors.deformable_detr import convert_mmdet3_keys
from rcnn_det.models.post_processing import to_original_image
from rcnn_det.registry import MODELS
from rcnn_det.structures import bbox_cxcywh_to_xyxy
from test_models.test_detectors.test_faster_rcnn import make_batch

CONFIG_DIR = REPO_ROOT / 'configs/deformable_detr'
TWO_STAGE = CONFIG_DIR / 'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'
ONE_STAGE = CONFIG_DIR / 'deformable-detr_r50_16xb2-50e_coco.py'


def build(config, **model_overrides):
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    cfg.model.update(model_overrides)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    model.init_weights()
    return model


@pytest.fixture(scope='module')
def two_stage():
    return build(TWO_STAGE)


def test_official_names_and_parts(two_stage):
    state = two_stage.state_dict()
    head = 'bbox_head.transformer.'
    expected = {
        head + 'level_embeds': (4, 256),
        head + 'encoder.layers.5.attentions.0.sampling_offsets.weight': (256, 256),
        head + 'encoder.layers.0.ffns.0.layers.0.0.weight': (1024, 256),
        head + 'decoder.layers.0.attentions.0.attn.in_proj_weight': (768, 256),
        head + 'decoder.layers.5.attentions.1.attention_weights.weight': (128, 256),
        head + 'decoder.layers.0.norms.2.weight': (256,),
        head + 'enc_output.weight': (256, 256),
        head + 'enc_output_norm.weight': (256,),
        head + 'pos_trans.weight': (512, 512),
        head + 'pos_trans_norm.weight': (512,),
        'bbox_head.cls_branches.6.weight': (80, 256),
        'bbox_head.reg_branches.6.4.weight': (4, 256),
        'neck.extra_convs.0.conv.weight': (256, 2048, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any('query_embedding' in k or 'reference_points' in k for k in state)
    # with_box_refine: 7 independent branches; two-stage: 6 decoder layers + the encoder's
    assert len(two_stage.bbox_head.cls_branches) == 7
    assert two_stage.bbox_head.reg_branches[0] is not two_stage.bbox_head.reg_branches[1]
    # the head's init: class prior 0.01, last box layer zero
    assert torch.allclose(two_stage.bbox_head.cls_branches[3].bias,
                          torch.full((80,), -4.59512), atol=1e-4)
    assert not two_stage.bbox_head.reg_branches[0][-1].weight.any()


def test_one_stage_config_shares_branches_and_learns_queries():
    model = build(ONE_STAGE, encoder=dict(num_layers=1), decoder=dict(num_layers=2))
    head = model.bbox_head
    assert len(head.cls_branches) == 2 and head.cls_branches[0] is head.cls_branches[1]
    state = model.state_dict()
    assert tuple(state['bbox_head.query_embedding.weight'].shape) == (300, 512)
    assert tuple(state['bbox_head.transformer.reference_points.weight'].shape) == (2, 256)
    # one-stage: small initial boxes (size logits -2)
    assert torch.equal(head.reg_branches[0][-1].bias, torch.tensor([0., 0., -2., -2.]))


def test_mmdet3_checkpoint_loads_through_the_key_map(two_stage):
    """An mmdet 3.x state dict (detector-level transformer names) loads strictly."""
    official = two_stage.state_dict()
    inverse = {  # official name -> mmdet 3.x name, written independently of MMDET3_KEY_MAP
        'bbox_head.transformer.level_embeds': 'level_embed',
        'bbox_head.transformer.enc_output.': 'memory_trans_fc.',
        'bbox_head.transformer.enc_output_norm.': 'memory_trans_norm.',
        'bbox_head.transformer.pos_trans.': 'pos_trans_fc.',
        'bbox_head.transformer.pos_trans_norm.': 'pos_trans_norm.',
    }
    mmdet3 = {}
    for key, value in official.items():
        new = key
        for old, repl in inverse.items():
            if key.startswith(old):
                new = repl + key[len(old):]
                break
        else:
            new = (key.replace('bbox_head.transformer.', '')
                   .replace('.attentions.0.', '.self_attn.')
                   .replace('.attentions.1.', '.cross_attn.')
                   .replace('.ffns.0.', '.ffn.'))
        mmdet3[new] = value.clone() + 1
    assert 'encoder.layers.0.self_attn.sampling_offsets.weight' in mmdet3
    assert 'decoder.layers.3.cross_attn.value_proj.bias' in mmdet3
    assert convert_mmdet3_keys(mmdet3).keys() == official.keys()
    model = build(TWO_STAGE, encoder=dict(num_layers=6))
    model.load_state_dict(mmdet3, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, official[key] + 1), key


def test_one_training_iteration_and_prediction(two_stage):
    model = two_stage.train()
    data = model.data_preprocessor(make_batch([(192, 256), (224, 160)]), True)
    losses = model(**data, mode='loss')
    names = {f'{p}loss_{n}' for p in ['', 'enc_'] + [f'd{k}.' for k in range(5)]
             for n in ('cls', 'bbox', 'iou')}
    assert set(losses) == names
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)
    model.zero_grad()
    total.backward()
    params = dict(model.named_parameters())
    # (the last layer of every box branch starts at zero, and so do the deformable attentions'
    # query projections: what lies before them gets no gradient on the first step)
    for name in ('bbox_head.cls_branches.6.weight', 'bbox_head.reg_branches.0.4.weight',
                 'bbox_head.transformer.encoder.layers.0.attentions.0.sampling_offsets.weight',
                 'bbox_head.transformer.encoder.layers.0.attentions.0.value_proj.weight',
                 'bbox_head.transformer.decoder.layers.5.attentions.1.output_proj.weight',
                 'neck.convs.0.conv.weight', 'backbone.layer4.0.downsample.0.weight'):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    assert not params['backbone.layer1.0.conv1.weight'].requires_grad  # frozen_stages=1

    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(make_batch([(160, 224)]), False)
        cls_scores, bbox_preds, enc_cls, enc_boxes = model(data['inputs'], data['data_samples'],
                                                           mode='tensor')
        pred = model(**data, mode='predict')[0].pred_instances
    assert cls_scores.shape == (6, 1, 300, 80) and bbox_preds.shape == (6, 1, 300, 4)
    # every decoder layer's boxes (normalised cxcywh) are strictly inside (0, 1)
    assert ((bbox_preds > 0) & (bbox_preds < 1)).all()
    tokens = 20 * 28 + 10 * 14 + 5 * 7 + 3 * 4                         # strides 8..64
    assert enc_cls.shape == (1, tokens, 80) and enc_boxes.shape == (1, tokens, 4)
    assert pred.bboxes.shape == (100, 4) and pred.scores.shape == (100,)
    assert (pred.scores[:-1] >= pred.scores[1:]).all()
    # boxes in the original frame (twice the input), clamped to it
    assert (pred.bboxes >= 0).all() and (pred.bboxes[:, 0::2] <= 448).all()
    assert (pred.bboxes[:, 1::2] <= 320).all()


def test_decoder_references_stay_inside_the_unit_square(two_stage):
    head = two_stage.bbox_head
    feats = [torch.randn(2, 256, s, s + 2) for s in (12, 6, 3, 2)]
    metas = [dict(img_shape=(90, 110), batch_input_shape=(96, 112)),
             dict(img_shape=(96, 112), batch_input_shape=(96, 112))]
    recorded = []
    decoder = head.transformer.decoder
    original = decoder.forward

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        recorded.append((kwargs['reference_points'], out[1]))
        return out
    decoder.forward = recording
    try:
        with torch.no_grad():
            head(feats, metas)
    finally:
        del decoder.forward
    init_ref, inter_refs = recorded[0]
    for refs in (init_ref, inter_refs):
        assert ((refs > 0) & (refs < 1)).all()


def test_loss_single_against_a_hand_matching():
    """One layer, one image, 3 queries, 2 objects, class costs decisive: the loss equals the
    focal / L1 / GIoU terms written out for the obvious matching."""
    model = build(ONE_STAGE, encoder=dict(num_layers=1), decoder=dict(num_layers=1))
    head = model.bbox_head
    meta = dict(img_shape=(100, 200))
    gt = InstanceData(bboxes=torch.tensor([[10., 10., 50., 60.], [100., 20., 180., 90.]]),
                      labels=torch.tensor([3, 7]))
    logits = torch.full((1, 3, 80), -6.0)
    logits[0, 0, 7] = 6.0          # query 0 -> object 1 (class 7)
    logits[0, 2, 3] = 6.0          # query 2 -> object 0 (class 3)
    boxes = torch.tensor([[[0.7, 0.55, 0.4, 0.7], [0.5, 0.5, 0.2, 0.2], [0.15, 0.35, 0.2, 0.5]]])
    losses = head.loss_single(logits, boxes, [gt], [meta])
    from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss
    target = torch.zeros(3, 80)
    target[0, 7] = target[2, 3] = 1
    focal = sigmoid_focal_loss(logits[0], target, alpha=0.25, gamma=2.0, reduction='sum') / 2
    torch.testing.assert_close(losses['loss_cls'], 2.0 * focal)
    factor = torch.tensor([200., 100., 200., 100.])
    matched_pred = boxes[0, [0, 2]]
    matched_gt = gt.bboxes[[1, 0]]
    gt_cxcywh = torch.stack([(matched_gt[:, 0] + matched_gt[:, 2]) / 2,
                             (matched_gt[:, 1] + matched_gt[:, 3]) / 2,
                             matched_gt[:, 2] - matched_gt[:, 0],
                             matched_gt[:, 3] - matched_gt[:, 1]], 1) / factor
    l1 = (matched_pred - gt_cxcywh).abs().sum() / 2
    torch.testing.assert_close(losses['loss_bbox'], 5.0 * l1)
    giou = generalized_box_iou_loss(bbox_cxcywh_to_xyxy(matched_pred) * factor, matched_gt,
                                    reduction='sum') / 2
    torch.testing.assert_close(losses['loss_iou'], 2.0 * giou, rtol=1e-4, atol=1e-5)


def test_predict_top_pairs_and_rescale():
    model = build(ONE_STAGE, encoder=dict(num_layers=1), decoder=dict(num_layers=1))
    head = model.bbox_head
    head.max_per_img = 3
    scores = torch.full((1, 4, 80), -9.0)
    scores[0, 1, 5], scores[0, 1, 6], scores[0, 3, 0] = 3.0, 2.0, 1.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.5, 0.5, 0.4], [0.5, 0.5, 1, 1],
                           [0.9, 0.9, 0.4, 0.4]]])
    meta = dict(img_shape=(100, 200), scale_factor=(2.0, 0.5))
    res = to_original_image(head.predict_by_feat(scores, boxes, [meta]), [meta])[0]
    assert res.labels.tolist() == [5, 6, 0]
    torch.testing.assert_close(res.scores, torch.tensor([3.0, 2.0, 1.0]).sigmoid())
    # query 1 twice (two classes); query 3 clamped to the image, then divided by (2, 0.5)
    expected = torch.tensor([[0., 30., 100., 70.], [0., 30., 100., 70.], [140., 70., 200., 100.]])
    expected = expected / torch.tensor([2.0, 0.5, 2.0, 0.5])
    torch.testing.assert_close(res.bboxes, expected)


def test_loss_by_feat_matches_each_layer_and_the_encoder_separately():
    """Every decoder layer is matched and weighed on its own (d{k}. prefixes, the last bare);
    the encoder's proposals are matched against class-agnostic (all class 0) objects."""
    model = build(ONE_STAGE, encoder=dict(num_layers=1), decoder=dict(num_layers=1))
    head = model.bbox_head
    g = torch.Generator().manual_seed(0)
    metas = [dict(img_shape=(100, 200)), dict(img_shape=(80, 120))]
    gts = [InstanceData(bboxes=torch.tensor([[10., 10., 50., 60.], [100., 20., 180., 90.]]),
                        labels=torch.tensor([3, 7])),
           InstanceData(bboxes=torch.tensor([[5., 8., 60., 70.]]), labels=torch.tensor([1]))]
    cls = torch.randn(3, 2, 6, 80, generator=g)
    boxes = torch.rand(3, 2, 6, 4, generator=g) * 0.5 + 0.25
    enc_cls = torch.randn(2, 20, 80, generator=g)
    enc_boxes = torch.rand(2, 20, 4, generator=g) * 0.5 + 0.25
    losses = head.loss_by_feat(cls, boxes, enc_cls, enc_boxes, gts, metas)
    assert set(losses) == {f'{p}loss_{n}' for p in ('d0.', 'd1.', '', 'enc_')
                           for n in ('cls', 'bbox', 'iou')}
    for k, prefix in enumerate(('d0.', 'd1.', '')):
        single = head.loss_single(cls[k], boxes[k], gts, metas)
        for name, value in single.items():
            torch.testing.assert_close(losses[prefix + name], value)
    binary = [InstanceData(bboxes=gt.bboxes, labels=torch.zeros_like(gt.labels)) for gt in gts]
    for name, value in head.loss_single(enc_cls, enc_boxes, binary, metas).items():
        torch.testing.assert_close(losses['enc_' + name], value)
    # the layers' losses differ: each has its own matching and predictions
    assert not torch.allclose(losses['d0.loss_bbox'], losses['loss_bbox'])


def test_sync_cls_avg_factor_averages_the_positive_count_over_processes(monkeypatch):
    """With sync_cls_avg_factor the focal loss is divided by the mean positive count of all
    processes (reduce_mean), like the box losses always are."""
    import rcnn_det.models.dense_heads.deformable_detr_head as head_module
    model = build(ONE_STAGE, encoder=dict(num_layers=1), decoder=dict(num_layers=1))
    head = model.bbox_head
    meta = dict(img_shape=(100, 200))
    gt = InstanceData(bboxes=torch.tensor([[10., 10., 50., 60.], [100., 20., 180., 90.]]),
                      labels=torch.tensor([3, 7]))
    g = torch.Generator().manual_seed(1)
    logits, boxes = torch.randn(1, 4, 80, generator=g), torch.rand(1, 4, 4, generator=g) * 0.5
    head.sync_cls_avg_factor = False
    local = head.loss_single(logits, boxes + 0.25, [gt], [meta])
    # pretend the other processes matched 6 objects on average: mean count 4 instead of 2
    monkeypatch.setattr(head_module, 'reduce_mean', lambda value, device=None: 2 * value)
    head.sync_cls_avg_factor = True
    synced = head.loss_single(logits, boxes + 0.25, [gt], [meta])
    torch.testing.assert_close(synced['loss_cls'], local['loss_cls'] / 2)
    torch.testing.assert_close(synced['loss_bbox'], local['loss_bbox'] / 2)
    head.sync_cls_avg_factor = False
    unsynced = head.loss_single(logits, boxes + 0.25, [gt], [meta])
    torch.testing.assert_close(unsynced['loss_cls'], local['loss_cls'])   # local count kept
    torch.testing.assert_close(unsynced['loss_bbox'], local['loss_bbox'] / 2)
