"""PseudoSampler keeps every positive and negative; ignored priors are in neither."""
from __future__ import annotations

import torch
from mmengine.structures import InstanceData

from rcnn_det.models.task_modules import AssignResult
from rcnn_det.registry import TASK_UTILS


def test_every_assigned_prior_is_kept():
    sampler = TASK_UTILS.build(dict(type='PseudoSampler'))
    priors = torch.arange(20, dtype=torch.float32).reshape(5, 4)
    gt = InstanceData(bboxes=torch.tensor([[0., 0., 4., 4.], [1., 1., 9., 9.]]),
                      labels=torch.tensor([3, 1]))
    assign = AssignResult(num_gts=2, gt_inds=torch.tensor([0, 2, -1, 1, 0]),
                          max_overlaps=torch.zeros(5), labels=torch.tensor([-1, 1, -1, 3, -1]))
    result = sampler.sample(assign, InstanceData(priors=priors), gt)
    assert result.pos_inds.tolist() == [1, 3] and result.neg_inds.tolist() == [0, 4]
    assert torch.equal(result.pos_priors, priors[[1, 3]])
    assert torch.equal(result.neg_priors, priors[[0, 4]])
    assert torch.equal(result.pos_gt_bboxes, gt.bboxes[[1, 0]])
    assert result.pos_gt_labels.tolist() == [1, 3]
    assert result.pos_assigned_gt_inds.tolist() == [1, 0]
    assert not result.pos_is_gt.any() and result.num_gts == 2


def test_image_without_objects():
    sampler = TASK_UTILS.build(dict(type='PseudoSampler'))
    gt = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    assign = AssignResult(num_gts=0, gt_inds=torch.zeros(3, dtype=torch.long),
                          max_overlaps=torch.zeros(3), labels=torch.full((3,), -1))
    result = sampler.sample(assign, InstanceData(priors=torch.rand(3, 4)), gt)
    assert result.pos_inds.numel() == 0 and result.neg_inds.tolist() == [0, 1, 2]
    assert result.pos_gt_bboxes.shape == (0, 4)
