"""CoATSSHead and CoStandardRoIHead hand Co-DETR's query head their own assignment
(``AuxiliaryHead.loss_and_positives``)."""
from __future__ import annotations

import pytest
import torch
from mmengine.config import Config
from mmengine.structures import InstanceData

from rcnn_det.models.detectors.two_stage import split_two_stage_cfg
from rcnn_det.structures import DetDataSample, bbox2roi
from tests.conftest import REPO_ROOT, build_initialised

DEMO = REPO_ROOT / 'configs' / 'demo' / 'co_deformable_detr_r18_shapes.py'
C, E = 4, 128
SIZES = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]   # the memory maps of a 64 x 80 input


def samples():
    out = []
    gts = [(torch.tensor([[4., 6., 40., 50.], [30., 10., 78., 60.]]), torch.tensor([2, 0])),
           (torch.tensor([[10., 12., 60., 40.]]), torch.tensor([3]))]
    for (h, w), (boxes, labels) in zip([(64, 80), (56, 72)], gts):
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), batch_input_shape=(64, 80),
                                             pad_shape=(h, w)))
        sample.gt_instances = InstanceData(bboxes=boxes, labels=labels)
        out.append(sample)
    return out


def memory():
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, E, h, w, generator=g) for h, w in SIZES)


def assert_targets_are_assigned_gts(positives, data_samples):
    for i, sample in enumerate(data_samples):
        gt = sample.gt_instances
        pos = positives.labels[i] < C
        assert pos.any()
        for label, target in zip(positives.labels[i][pos], positives.targets[i][pos]):
            match = (gt.bboxes == target).all(-1)
            assert match.sum() == 1 and gt.labels[match][0] == label
        assert (positives.targets[i][~pos] == 0).all()


@pytest.mark.parametrize('ratios', [[1.0], [0.5, 1.0, 2.0]])
def test_co_atss_head_returns_every_anchor_and_its_assignment(ratios):
    cfg = Config.fromfile(DEMO).model
    head_cfg = dict(cfg.bbox_head[0], train_cfg=cfg.train_cfg[2], test_cfg=cfg.test_cfg[2])
    head_cfg['anchor_generator'] = dict(head_cfg['anchor_generator'], ratios=ratios)
    head = build_initialised(head_cfg)
    data_samples = samples()
    out = head.loss_and_positives(memory(), data_samples)
    losses, positives = out.losses, out.positives
    assert set(losses) == {'loss_cls', 'loss_bbox', 'loss_centerness'}
    # the same losses as ATSSHead computes
    plain = head.loss(memory(), data_samples)
    for key in losses:
        torch.testing.assert_close(sum(losses[key]), sum(plain[key]))
    per_location = len(ratios)
    anchors = torch.cat(head.prior_generator.grid_priors(SIZES))
    assert positives.coords.shape == (2, sum(h * w for h, w in SIZES) * per_location, 4)
    assert torch.equal(positives.coords[0], anchors) and torch.equal(positives.coords[1], anchors)
    # each anchor's feature is the memory at its location (A anchors share one)
    flat = torch.cat([m.flatten(2).transpose(1, 2) for m in memory()], 1)
    assert torch.equal(positives.feats, flat.repeat_interleave(per_location, 1))
    assert_targets_are_assigned_gts(positives, data_samples)


def test_co_roi_head_returns_its_sampled_rois_positives_first():
    cfg = Config.fromfile(DEMO).model
    parts = split_two_stage_cfg(cfg.train_cfg[1], cfg.test_cfg[1])
    head = build_initialised(dict(cfg.roi_head[0], train_cfg=parts['rcnn_train'],
                      test_cfg=parts['rcnn_test']))
    data_samples = samples()
    g = torch.Generator().manual_seed(2)
    proposals = []
    for sample in data_samples:   # jittered gts (positives) and random boxes
        boxes = sample.gt_instances.bboxes.repeat(4, 1) + torch.randn(
            4 * len(sample.gt_instances), 4, generator=g)
        xy = torch.rand(30, 2, generator=g) * 50
        proposals.append(InstanceData(bboxes=torch.cat([boxes, torch.cat(
            [xy, xy + 8 + torch.rand(30, 2, generator=g) * 20], 1)])))
    sampled = {}
    original = head.sample

    def spy(*args):
        sampled['results'] = original(*args)
        return sampled['results']
    head.sample = spy
    with pytest.raises(ValueError, match='needs the RPN proposals'):
        head.loss_and_positives(memory(), data_samples)
    out = head.loss_and_positives(memory(), data_samples, proposals)
    losses, positives = out.losses, out.positives
    assert {'loss_cls', 'acc', 'loss_bbox'} <= set(losses)
    results = sampled['results']
    num = min(len(r.priors) for r in results)
    assert positives.coords.shape == (2, num, 4)
    for i, res in enumerate(results):
        assert torch.equal(positives.coords[i], res.priors[:num])
        num_pos = len(res.pos_inds)
        assert (positives.labels[i, :num_pos] == res.pos_gt_labels[:num]).all()
        assert (positives.labels[i, num_pos:] == C).all()
    assert_targets_are_assigned_gts(positives, data_samples)
    # the RoI features averaged over the bins, with their graph
    rois = bbox2roi([r.priors[:num] for r in results])
    pooled = head.bbox_roi_extractor(memory()[:4], rois).mean((2, 3)).view(2, num, E)
    torch.testing.assert_close(positives.feats, pooled)
