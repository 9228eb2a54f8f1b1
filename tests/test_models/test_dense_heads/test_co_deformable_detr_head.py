"""CoDeformDETRHead's positive queries (get_aux_targets, loss_aux), CoDeformableDetrTransformer's
auxiliary decoder pass, on the demo config's small query head."""
from __future__ import annotations

import logging

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from rcnn_det.models.auxiliary_heads import AuxPositives
from rcnn_det.registry import MODELS
from rcnn_det.structures import DetDataSample, bbox_xyxy_to_cxcywh
from tests.conftest import REPO_ROOT

DEMO = REPO_ROOT / 'configs' / 'demo' / 'co_deformable_detr_r18_shapes.py'
C = 4            # demo classes
E = 128          # demo embed dims
HW = (64, 80)    # network input of the tests


@pytest.fixture(scope='module')
def head():
    cfg = Config.fromfile(DEMO).model
    torch.manual_seed(0)
    query_head = MODELS.build(dict(cfg.query_head, train_cfg=cfg.train_cfg[0],
                                   test_cfg=cfg.test_cfg[0]))
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    query_head.init_weights()
    return query_head


def metas(shapes=((64, 80), (48, 64))):
    return [dict(img_shape=s, batch_input_shape=HW) for s in shapes]


def maps(seed: int = 0):
    """The memory maps: the encoder's 4 (strides 8..64) and the extra stride-128 one."""
    g = torch.Generator().manual_seed(seed)
    sizes = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]
    return tuple(torch.randn(2, E, h, w, generator=g) for h, w in sizes)


def positives(num_pos: tuple[int, int], num_priors: int = 60, seed: int = 0) -> AuxPositives:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(2, num_priors, 2, generator=g) * 40
    coords = torch.cat([xy, xy + 5 + torch.rand(2, num_priors, 2, generator=g) * 20], -1)
    labels = torch.full((2, num_priors), C)
    targets = torch.zeros(2, num_priors, 4)
    for i, n in enumerate(num_pos):
        idx = torch.randperm(num_priors, generator=g)[:n]
        labels[i, idx] = torch.randint(0, C, (n,), generator=g)
        targets[i, idx] = coords[i, idx] + torch.randn(n, 4, generator=g)
    return AuxPositives(coords, labels, targets, torch.randn(2, num_priors, E, generator=g))


def test_positive_queries_follow_the_auxiliary_assignment(head):
    pos = positives((12, 3))
    torch.manual_seed(0)
    coords, labels, targets, label_weights, bbox_weights, feats = head.get_aux_targets(pos, metas())
    num = 12                                  # the most positives of an image
    assert coords.shape == targets.shape == (2, num, 4) and feats.shape == (2, num, E)
    assert torch.equal(label_weights, torch.ones(2, num))   # padding negatives are trained too
    factors = [torch.tensor([80., 64., 80., 64.]), torch.tensor([64., 48., 64., 48.])]
    for i, real in enumerate((12, 3)):
        assert (labels[i, :real] < C).all() and (labels[i, real:] == C).all()  # positives first
        assert torch.equal(bbox_weights[i], (labels[i] < C)[:, None].float().expand(-1, 4))
        # every query is one of the image's priors, with that prior's label, target and feature
        for q in range(num):
            prior = [a for a in range(60) if torch.allclose(
                bbox_xyxy_to_cxcywh(pos.coords[i, a] / factors[i]), coords[i, q])]
            assert len(prior) == 1
            a = prior[0]
            assert labels[i, q] == pos.labels[i, a]
            assert torch.equal(feats[i, q], pos.feats[i, a])
            if labels[i, q] < C:
                torch.testing.assert_close(targets[i, q],
                                           bbox_xyxy_to_cxcywh(pos.targets[i, a] / factors[i]))
        # all of the image's positives are used, each once
        assert (labels[i] < C).sum() == (pos.labels[i] < C).sum()


@pytest.mark.parametrize('num_pos, expected', [((2, 0), 9), ((70, 5), 50), ((20, 30), 30)])
def test_number_of_positive_queries(head, num_pos, expected, monkeypatch):
    """clamp(the most positives of an image, 9, max_pos_coords) (and at most the priors)."""
    monkeypatch.setattr(head, 'max_pos_coords', 50)
    pos = positives(num_pos, num_priors=80)
    labels = head.get_aux_targets(pos, metas())[1]
    assert labels.shape == (2, expected)
    for i, n in enumerate(num_pos):
        assert int((labels[i] < C).sum()) == min(n, expected)


def test_positives_must_be_per_query():
    pos = positives((3, 2))
    with pytest.raises(ValueError, match='feats must be'):
        AuxPositives(pos.coords, pos.labels, pos.targets, pos.feats[:, :10])
    with pytest.raises(ValueError, match='coords must be'):
        AuxPositives(pos.coords[:1], pos.labels, pos.targets, pos.feats)


def test_loss_aux_keys_weights_and_isolation_from_the_matching_queries(head, monkeypatch):
    samples = [DetDataSample(metainfo=m) for m in metas()]
    memory, pos = maps(), positives((5, 2))
    torch.manual_seed(0)
    losses = head.loss_aux(memory, pos, 1, samples)
    assert set(losses) == {f'{p}loss_{n}_aux' for p in ('', 'd0.', 'd1.')
                           for n in ('cls', 'bbox', 'iou')}
    assert all(torch.isfinite(v) for v in losses.values())
    # lambda_1 scales every term
    monkeypatch.setattr(head, 'lambda_1', 3.0)
    torch.manual_seed(0)
    tripled = head.loss_aux(memory, pos, 1, samples)
    for key, value in losses.items():
        torch.testing.assert_close(tripled[key], 3 * value)
    # the positive queries never see the matching queries (their own decoder pass)
    with torch.no_grad():
        saved = head.query_embedding.weight.clone()
        head.query_embedding.weight.mul_(-3.0)
    try:
        torch.manual_seed(0)
        again = head.loss_aux(memory, pos, 1, samples)
    finally:
        with torch.no_grad():
            head.query_embedding.weight.copy_(saved)
    for key, value in tripled.items():
        torch.testing.assert_close(again[key], value)


def test_auxiliary_heads_have_their_own_query_transforms(head):
    """head k's positives go through aux_pos_trans[k], pos_feats_trans[k] and the scalar
    head_pos_embed[k]; another k gives other queries, an unknown k an error."""
    samples = [DetDataSample(metainfo=m) for m in metas()]
    memory, pos = maps(), positives((5, 2))
    torch.manual_seed(0)
    first = head.loss_aux(memory, pos, 0, samples)
    torch.manual_seed(0)
    second = head.loss_aux(memory, pos, 1, samples)
    assert any(not torch.allclose(first[k], second[k]) for k in first)
    assert head.transformer.head_pos_embed.weight.shape == (2, 1)
    with pytest.raises(IndexError, match='auxiliary head 2 of 2'):
        head.loss_aux(memory, pos, 2, samples)


def test_memory_maps_and_the_extra_level(head):
    """forward's memory maps: the encoder memory split back into the 4 maps, plus
    downsample(map 3)."""
    head.eval()
    g = torch.Generator().manual_seed(3)
    sizes = [(8, 10), (4, 5), (2, 3), (1, 2)]
    feats = tuple(torch.randn(2, E, h, w, generator=g) for h, w in sizes)
    with torch.no_grad():
        *_, enc = head.forward_with_memory(feats, metas())
        memory = head(feats, metas())[-1]
    assert len(memory) == 5
    for got, (h, w), start in zip(memory, [(8, 10), (4, 5), (2, 3), (1, 2)], [0, 80, 100, 106]):
        expected = enc.memory[:, start:start + h * w].transpose(1, 2).reshape(2, E, h, w)
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(memory[4], head.downsample(memory[3]))
    head.train()


def test_zero_padding_mode_is_refused():
    cfg = Config.fromfile(DEMO).model
    with pytest.raises(NotImplementedError, match='use_zero_padding'):
        MODELS.build(dict(cfg.query_head, use_zero_padding=True))


def test_mixed_selection_needs_one_content_query_per_proposal():
    cfg = Config.fromfile(DEMO).model
    transformer = dict(cfg.query_head.transformer, two_stage_num_proposals=40)
    with pytest.raises(ValueError, match='two_stage_num_proposals'):
        MODELS.build(dict(cfg.query_head, transformer=transformer))
