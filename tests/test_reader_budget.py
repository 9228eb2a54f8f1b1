"""The reading budget of docs/reading_budget.md: two paths a reader follows stay easy to follow.

Each test traces one path with ``sys.setprofile`` and counts the framework code that ran: files,
classes, functions and nesting depth (torch and the standard library are not counted). The
budgets are docs/reading_budget.md's table, read from it, so the document and the test cannot
disagree; a change that exceeds a budget is a decision to take in review (and to write into
that table), not an accident.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
import torchvision
from mmengine.config import Config
from mmengine.structures import InstanceData

import rcnn_det
from rcnn_det.models.dense_heads import RPNHead
from rcnn_det.models.recipes import NMSConfig, ProposalRecipe
from rcnn_det.registry import MODELS
from rcnn_det.structures import DetDataSample
from tests.conftest import REPO_ROOT

PACKAGE_ROOTS = {
    'rcnn_det': Path(rcnn_det.__file__).parent,
    'torchvision': Path(torchvision.__file__).parent,
}
import mmengine  # noqa: E402

PACKAGE_ROOTS['mmengine'] = Path(mmengine.__file__).parent

COMPREHENSIONS = ('<listcomp>', '<setcomp>', '<dictcomp>', '<genexpr>')
BUDGET_DOC = REPO_ROOT / 'docs' / 'reading_budget.md'
MEASURES = ('files', 'files_inside', 'files_outside', 'classes', 'functions', 'depth')


def read_budgets() -> dict[str, dict[str, int]]:
    """docs/reading_budget.md's table: one row per measure, one budget column per path."""
    rows = [line for line in BUDGET_DOC.read_text().splitlines() if line.startswith('| `')]
    budgets: dict[str, dict[str, int]] = {'rpn': {}, 'co_detr_aux': {}}
    for row in rows:
        cells = [c.strip() for c in row.strip('|').split('|')]
        measure = cells[0].strip('`')
        budgets['rpn'][measure] = int(re.sub(r'\D', '', cells[1]))
        budgets['co_detr_aux'][measure] = int(re.sub(r'\D', '', cells[2]))
    assert set(budgets['rpn']) == set(MEASURES), f'{BUDGET_DOC}: rows {sorted(budgets["rpn"])}'
    return budgets


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
    # As TwoStageDetector passes it: the config dict is read once, at build time.
    recipe = ProposalRecipe(nms_pre=200, max_per_img=100, nms=NMSConfig(iou_threshold=0.7),
                            min_bbox_size=0)
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


def make_co_detr_aux_inputs():
    """The demo Co-DETR's heads on a 64 x 80 batch: the memory maps, the RPN's proposals and
    the samples, so that the traced path is the auxiliary heads' alone."""
    cfg = Config.fromfile(REPO_ROOT / 'configs' / 'demo' / 'co_deformable_detr_r18_shapes.py')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    samples = []
    for i in range(2):
        s = DetDataSample(metainfo=dict(img_shape=(64, 80), pad_shape=(64, 80),
                                        batch_input_shape=(64, 80), scale_factor=(1., 1.)))
        s.gt_instances = InstanceData(bboxes=torch.tensor([[4., 6., 40., 50.]]) + i,
                                      labels=torch.tensor([1]))
        samples.append(s)
    feats = model.extract_feat(torch.randn(2, 3, 64, 80))
    memory = model.query_head(feats, [s.metainfo for s in samples])[-1]
    proposals = model.rpn_head.loss_and_predict(memory, samples, model.rpn_proposal)[1]
    return model, memory, proposals, samples


def co_detr_aux_path(model, memory, proposals, samples) -> None:
    """What CoDETR.loss does per auxiliary head: its losses and positives, then the query
    head's positive-query losses."""
    for k, head in enumerate(model.aux_heads):
        out = head.loss_and_positives(memory, samples, proposals if head.needs_proposals else None)
        model.query_head.loss_aux(memory, out.positives, k, samples)


def assert_within(budget: dict, counts: dict, path: str) -> None:
    over = {k: (counts[k], v) for k, v in budget.items() if counts[k] > v}
    assert not over, (f'{path}: reading budget exceeded (measured, budget): {over}; rcnn_det '
                      f'files: {counts["inside_names"]}')


def test_rpn_training_step_stays_within_the_reading_budget():
    head, feats, samples, recipe = make_rpn_inputs()
    head.loss_and_predict(feats, samples, recipe)  # warm up lazy imports and registries
    counts = trace(lambda: head.loss_and_predict(feats, samples, recipe))
    assert_within(read_budgets()['rpn'], counts, 'RPNHead.loss_and_predict')


def test_co_detr_auxiliary_path_stays_within_the_reading_budget():
    inputs = make_co_detr_aux_inputs()
    co_detr_aux_path(*inputs)
    counts = trace(lambda: co_detr_aux_path(*inputs))
    assert_within(read_budgets()['co_detr_aux'], counts, 'the Co-DETR auxiliary path')


def test_rpn_head_has_at_most_two_project_base_classes():
    project_bases = [c for c in RPNHead.__mro__[1:] if c.__module__.startswith('rcnn_det')]
    assert len(project_bases) <= 2, project_bases
