"""DINO (configs/dino/): one training iteration of the R50 model, inference in the original
frame, and the parts DINO adds: query selection by the best class logit, the coordinate sine
embedding, look-forward-twice, and the denoising attention mask."""
from __future__ import annotations

import math

import pytest
import torch
from mmengine.config import Config
from mmengine.structures import InstanceData

from rcnn_det.models.layers import (DinoTransformerDecoder, coordinate_sine_embed,
                                    select_topk_proposals)
from rcnn_det.structures import DetDataSample
from tests.conftest import REPO_ROOT, build_initialised

CONFIG = REPO_ROOT / 'configs' / 'dino' / 'dino-4scale_r50_8xb2-12e_coco.py'


def dino_loss_keys(num_dec_layers: int = 6) -> set[str]:
    """mmdetection's DINO logs: the matching queries' losses per decoder layer, the encoder's
    selected proposals', and the denoising queries' per layer."""
    layers = [''] + [f'd{k}.' for k in range(num_dec_layers - 1)]
    names = ('cls', 'bbox', 'iou')
    return ({f'{p}loss_{n}' for p in layers for n in names}
            | {f'enc_loss_{n}' for n in names}
            | {f'{p}dn_loss_{n}' for p in layers for n in names})


def make_batch(model, sizes, counts, num_classes=80, seed=0, training=True):
    """Random images of ``sizes`` with ``counts`` random boxes each, through the model's data
    preprocessor."""
    gen = torch.Generator().manual_seed(seed)
    images, samples = [], []
    for (h, w), n in zip(sizes, counts):
        images.append(torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=gen))
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(2 * h, 2 * w),
                                             scale_factor=(0.5, 0.5)))
        xy = torch.rand(n, 2, generator=gen) * torch.tensor([w / 2, h / 2])
        wh = 8 + torch.rand(n, 2, generator=gen) * torch.tensor([w / 3, h / 3])
        sample.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                                           labels=torch.randint(0, num_classes, (n,),
                                                                generator=gen))
        samples.append(sample)
    return model.data_preprocessor(dict(inputs=images, data_samples=samples), training)


def total_loss(losses: dict) -> torch.Tensor:
    return sum(sum(v) if isinstance(v, list) else v for k, v in losses.items() if 'loss' in k)


@pytest.fixture(scope='module')
def dino_r50():
    cfg = Config.fromfile(CONFIG)
    cfg.model.backbone.init_cfg = None
    return build_initialised(cfg.model)


def test_one_training_iteration_every_loss_key_and_gradient(dino_r50):
    model = dino_r50.train()
    # one image without objects: its denoising slots are all padding
    data = make_batch(model, [(64, 80), (72, 64)], [3, 0])
    losses = model(**data, mode='loss')
    assert set(losses) == dino_loss_keys()
    assert all(torch.isfinite(v).all() for v in losses.values())
    model.zero_grad()
    total_loss(losses).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    # the backbone's frozen stem stays frozen
    assert not model.backbone.conv1.weight.requires_grad


def test_a_batch_without_objects_trains(dino_r50):
    model = dino_r50.train()
    losses = model(**make_batch(model, [(64, 64), (64, 64)], [0, 0]), mode='loss')
    assert all(torch.isfinite(v).all() for v in losses.values())
    model.zero_grad()
    total_loss(losses).backward()
    assert model.dn_query_generator.label_embedding.weight.grad is not None


def test_prediction_in_the_original_frame(dino_r50):
    model = dino_r50.eval()
    data = make_batch(model, [(64, 80)], [1], training=False)
    with torch.no_grad():
        pred = model(**data, mode='predict')[0].pred_instances
    # the test_cfg's best 300 (query, class) pairs of the selected queries (the 108 tokens of a
    # 64x80 input give 108 x 80 pairs)
    assert len(pred) == 300
    assert pred.scores[:-1].ge(pred.scores[1:]).all()
    # boxes in the original image (twice the input): within (0, 0, 160, 128)
    assert pred.bboxes.min() >= 0 and pred.bboxes[:, 0::2].max() <= 160 \
        and pred.bboxes[:, 1::2].max() <= 128


def test_query_selection_takes_the_tokens_with_the_best_class_logit():
    gen = torch.Generator().manual_seed(1)
    enc_class = torch.randn(2, 30, 5, generator=gen)
    enc_coord = torch.randn(2, 30, 4, generator=gen, requires_grad=True)
    scores, boxes, refs = select_topk_proposals(enc_class, enc_coord, 7)
    for b in range(2):
        best = sorted(range(30), key=lambda i: -float(enc_class[b, i].max()))[:7]
        assert torch.equal(scores[b], enc_class[b, best])
        assert torch.allclose(boxes[b], enc_coord[b, best].sigmoid())
        assert torch.equal(refs[b], enc_coord[b, best].detach())
    assert boxes.requires_grad and not refs.requires_grad
    # fewer tokens than queries: all of them
    assert select_topk_proposals(enc_class, enc_coord, 100)[0].shape == (2, 30, 5)


def test_coordinate_sine_embedding_against_the_formula():
    coords = torch.rand(2, 3, 4)
    num_feats = 8
    embed = coordinate_sine_embed(coords, num_feats)
    assert embed.shape == (2, 3, 4 * num_feats)
    for b in range(2):
        for q in range(3):
            expected = []
            for c in (1, 0, 2, 3):   # y, x, w, h
                for k in range(num_feats):
                    angle = coords[b, q, c] * 2 * math.pi / 10000 ** (2 * (k // 2) / num_feats)
                    expected.append(math.sin(angle) if k % 2 == 0 else math.cos(angle))
            assert torch.allclose(embed[b, q], torch.tensor(expected), atol=1e-5)
    assert coordinate_sine_embed(coords[..., :2], num_feats).shape == (2, 3, 2 * num_feats)


def small_decoder(layout: str) -> DinoTransformerDecoder:
    attn = dict(embed_dims=32, num_heads=4, dropout=0.0)
    deform = dict(embed_dims=32, num_heads=4, num_levels=2, num_points=2, dropout=0.0)
    if layout == 'official':
        layers = dict(type='DetrTransformerDecoderLayer',
                      attn_cfgs=[dict(type='MultiheadAttention', **attn),
                                 dict(type='MultiScaleDeformableAttention', **deform)],
                      feedforward_channels=64, ffn_dropout=0.0,
                      operation_order=('self_attn', 'norm', 'cross_attn', 'norm', 'ffn',
                                       'norm'))
        return DinoTransformerDecoder(num_layers=3, transformerlayers=layers)
    return DinoTransformerDecoder(num_layers=3, layer_cfg=dict(
        self_attn_cfg=attn, cross_attn_cfg=deform,
        ffn_cfg=dict(embed_dims=32, feedforward_channels=64, ffn_drop=0.0)))


def decoder_inputs(num_queries: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[6, 8], [3, 4]])
    value = torch.randn(2, 60, 32, generator=gen)
    return dict(query=torch.randn(2, num_queries, 32, generator=gen), key=None, value=value,
                reference_points=torch.rand(2, num_queries, 4, generator=gen) * 0.5 + 0.25,
                valid_ratios=torch.ones(2, 2, 2), spatial_shapes=shapes,
                level_start_index=torch.tensor([0, 48]),
                key_padding_mask=torch.zeros(2, 60, dtype=torch.bool))


@pytest.mark.parametrize('layout', ['official', 'mmdet3'])
def test_the_two_layouts_have_their_checkpoint_names(layout):
    keys = set(small_decoder(layout).state_dict())
    if layout == 'official':
        assert {'layers.0.attentions.0.attn.in_proj_weight', 'layers.2.ffns.0.layers.1.weight',
                'ref_point_head.0.weight', 'ref_point_head.2.bias', 'norm.weight'} <= keys
    else:
        assert {'layers.0.self_attn.attn.in_proj_weight', 'layers.1.cross_attn.value_proj.bias',
                'layers.2.ffn.layers.0.0.weight', 'layers.2.norms.2.weight',
                'ref_point_head.layers.0.weight', 'ref_point_head.layers.1.bias',
                'norm.weight'} <= keys


def test_look_forward_twice_trains_each_box_branch_from_the_next_layer():
    """Layer k predicts relative to layer k - 1's refined box, which is not detached there
    (the next layer itself starts from the detached box): the last layer's box loss trains its
    own branch and the previous layer's, and no earlier one."""
    from rcnn_det.models.layers import inverse_sigmoid
    torch.manual_seed(0)
    decoder = small_decoder('mmdet3')
    reg_branches = torch.nn.ModuleList(torch.nn.Linear(32, 4) for _ in range(3))
    states, references = decoder(**decoder_inputs(5), reg_branches=reg_branches)
    assert states.shape == (3, 2, 5, 32) and references.shape == (4, 2, 5, 4)
    last = (reg_branches[2](states[2]) + inverse_sigmoid(references[2])).sigmoid()
    last.sum().backward()
    grads = [branch.weight.grad for branch in reg_branches]
    assert grads[2].abs().sum() > 0 and grads[1].abs().sum() > 0
    assert grads[0] is None or grads[0].abs().sum() == 0


@pytest.mark.parametrize('layout', ['official', 'mmdet3'])
def test_denoising_mask_hides_the_denoising_queries_from_the_matching_ones(layout):
    """With the denoising attention mask, the matching queries' outputs do not depend on the
    denoising queries in front of them: the same as a decoder run without them."""
    from rcnn_det.models.layers import dn_attn_mask
    torch.manual_seed(0)
    decoder = small_decoder(layout).eval()
    reg_branches = torch.nn.ModuleList(torch.nn.Linear(32, 4) for _ in range(3))
    num_dn, num_match = 8, 5   # 2 groups of (2 positives + 2 negatives)
    inputs = decoder_inputs(num_dn + num_match)
    mask = dn_attn_mask(2, 2, num_match, torch.device('cpu'))
    with torch.no_grad():
        states, refs = decoder(**inputs, reg_branches=reg_branches, attn_masks=mask)
        alone = dict(inputs, query=inputs['query'][:, num_dn:],
                     reference_points=inputs['reference_points'][:, num_dn:])
        states_alone, refs_alone = decoder(**alone, reg_branches=reg_branches)
        torch.testing.assert_close(states[:, :, num_dn:], states_alone)
        torch.testing.assert_close(refs[:, :, num_dn:], refs_alone)
        # without the mask they differ
        unmasked, _ = decoder(**inputs, reg_branches=reg_branches)
        assert not torch.allclose(unmasked[:, :, num_dn:], states_alone, atol=1e-4)
