"""The reader budget of STYLE.md section 3: one RPN training step must stay easy to follow.

The test traces ``RPNHead.loss_and_predict`` (anchors, assignment, sampling, encoding, losses,
decoding, NMS) with ``sys.setprofile`` and counts the framework code that ran: files, classes,
functions and nesting depth. torch itself and the standard library are not counted. A change
that exceeds the budget is a decision to take in review, not an accident.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torchvision
from mmengine.structures import InstanceData

import rcnn_det
from rcnn_det.models.dense_heads import RPNHead
from rcnn_det.models.recipes import ProposalRecipe
from rcnn_det.structures import DetDataSample

PACKAGE_ROOTS = {
    'rcnn_det': Path(rcnn_det.__file__).parent,
    'torchvision': Path(torchvision.__file__).parent,
}
import mmengine  # noqa: E402

PACKAGE_ROOTS['mmengine'] = Path(mmengine.__file__).parent

COMPREHENSIONS = ('<listcomp>', '<setcomp>', '<dictcomp>', '<genexpr>')
# STYLE.md's targets, with three reviewed exceptions:
# - files_inside 11 (target 9), files 17 (16): losses/reduction.py holds the weight/avg_factor
#   reduction both losses share (mmdet's losses/utils.py), and structures/det_data_sample.py runs
#   because the head reads `sample.gt_instances`, a property of DetDataSample;
# - functions 49 (45): those two files' functions, and clip_to_shapes kept as a tested helper;
# - depth 9 (8): the deepest chain is head -> anchor_targets -> assigner -> bbox_overlaps, then
#   torchvision's own box_iou -> _box_inter_union -> box_area -> _log_api_usage_once.
BUDGET = dict(files=17, files_inside=11, files_outside=7, classes=10, functions=49, depth=9)


def make_rpn_inputs():
    head = RPNHead(
        in_channels=8, feat_channels=8,
        anchor_generator=dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0],
                              strides=[4, 8]),
        train_cfg=dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3,
                          min_pos_iou=0.3, match_low_quality=True, ignore_iof_thr=-1),
            sampler=dict(type='RandomSampler', num=256, pos_fraction=0.5, neg_pos_ub=-1,
                         add_gt_as_proposals=False),
            allowed_border=-1, pos_weight=-1, debug=False))
    feats = (torch.rand(2, 8, 16, 16), torch.rand(2, 8, 8, 8))
    samples = []
    for i in range(2):
        s = DetDataSample(metainfo=dict(img_shape=(64, 64), pad_shape=(64, 64),
                                        batch_input_shape=(64, 64), scale_factor=(1., 1.)))
        s.gt_instances = InstanceData(bboxes=torch.tensor([[4., 4., 30., 40.]]) + i,
                                      labels=torch.tensor([0]))
        samples.append(s)
    # As TwoStageDetector passes it: the config dict is parsed once, at build time.
    recipe = ProposalRecipe(nms_pre=200, max_per_img=100, iou_threshold=0.7, min_bbox_size=0)
    return head, feats, samples, recipe


def trace(fn) -> dict:
    files, classes, functions = set(), set(), set()
    depth = max_depth = 0

    def package_of(filename: str) -> str | None:
        for name, root in PACKAGE_ROOTS.items():
            if filename.startswith(str(root)):
                return name
        return None

    def profiler(frame, event, arg):
        nonlocal depth, max_depth
        if event not in ('call', 'return'):
            return
        filename = frame.f_code.co_filename
        if package_of(filename) is None or frame.f_code.co_name in COMPREHENSIONS:
            return  # comprehensions are frames in Python < 3.12, not functions a reader follows
        if event == 'return':
            depth -= 1
            return
        depth += 1
        max_depth = max(max_depth, depth)
        files.add(filename)
        qualname = frame.f_code.co_qualname
        functions.add((filename, qualname))
        if '.' in qualname and '<locals>' not in qualname.split('.')[0]:
            classes.add((filename, qualname.split('.')[0]))

    sys.setprofile(profiler)
    try:
        fn()
    finally:
        sys.setprofile(None)
    inside = {f for f in files if package_of(f) == 'rcnn_det'}
    return dict(files=len(files), files_inside=len(inside), files_outside=len(files - inside),
                classes=len(classes), functions=len(functions), depth=max_depth,
                inside_names=sorted(Path(f).relative_to(PACKAGE_ROOTS['rcnn_det']).as_posix()
                                    for f in inside))


def test_rpn_training_step_stays_within_the_reader_budget():
    head, feats, samples, recipe = make_rpn_inputs()
    head.loss_and_predict(feats, samples, recipe)  # warm up lazy imports and registries
    counts = trace(lambda: head.loss_and_predict(feats, samples, recipe))
    over = {k: (counts[k], v) for k, v in BUDGET.items() if counts[k] > v}
    assert not over, f'reader budget exceeded (measured, budget): {over}; rcnn_det files: ' \
                     f'{counts["inside_names"]}'


def test_rpn_head_has_at_most_two_project_base_classes():
    project_bases = [c for c in RPNHead.__mro__[1:] if c.__module__.startswith('rcnn_det')]
    assert len(project_bases) <= 2, project_bases
