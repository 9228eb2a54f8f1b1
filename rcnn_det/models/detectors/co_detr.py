"""``CoDETR``: Co-DETR (Zong et al., 2023), a DETR query head trained together with one-to-many
auxiliary heads (an RPN with R-CNN heads, ATSS-style dense heads) on its encoder memory, whose
positive assignments also train the decoder as extra queries.

Config and state-dict names are the official code's: ``query_head``, ``rpn_head``,
``roi_head`` (a list), ``bbox_head`` (a list), and ``train_cfg``/``test_cfg`` as lists:
[query head, rpn + roi_head 0 (``rpn``, ``rpn_proposal``, ``rcnn``), roi_head 1, ...,
bbox_head 0, ...].
"""
from __future__ import annotations

import copy

import torch.nn as nn
from mmengine.structures import InstanceData
from torch import Tensor

from rcnn_det.registry import MODELS
from rcnn_det.structures import SampleList

from ..auxiliary_heads import AuxiliaryHead
from ..post_processing import MaskPaste
from ..recipes import ProposalRecipe
from .base import BaseDetector
from .two_stage import split_two_stage_cfg

EVAL_MODULES = ('detr', 'one-stage', 'two-stage')


def heads_list(cfg) -> list[dict]:
    """The official ``roi_head=[None]`` / ``bbox_head=[None]`` mean none."""
    if cfg is None:
        return []
    cfgs = list(cfg) if isinstance(cfg, (list, tuple)) else [cfg]
    return [c for c in cfgs if c is not None]


def cfg_at(cfgs, index: int):
    cfgs = list(cfgs or [])
    return cfgs[index] if index < len(cfgs) else None


def suffixed(losses: dict, suffix: int) -> dict:
    return {f'{name}{suffix}': value for name, value in losses.items()}


@MODELS.register_module()
class CoDETR(BaseDetector):
    """loss() -> the query head's one-to-one losses; ``loss_rpn_*``; each auxiliary head k's
    own losses suffixed k (RoI heads first, then dense heads); and, per auxiliary head k, the
    query head's positive-query losses suffixed k.

    predict() -> ``eval_module`` 'detr' (the query head), 'one-stage' (``bbox_head[eval_index]``
    on the encoder memory) or 'two-stage' (RPN + ``roi_head[eval_index]`` on it); boxes in the
    original image frame.

    Every auxiliary head implements ``AuxiliaryHead.loss_and_positives``; at build time the
    model checks that each got its train/test cfg entry and, with ``with_pos_coord``, that the
    query head's transformer has one positive-query branch per auxiliary head
    (``num_co_heads``).

    Args:
        with_pos_coord: train the decoder on the auxiliary heads' positives.
        with_attn_mask: False treats the whole padded batch as image in training and testing
            (the official option for large-scale-jitter training, where padding is part of the
            augmentation).
        use_lsj: mmdetection 3.x's name for the same switch: ``use_lsj=True`` is
            ``with_attn_mask=False`` (given, it overrides ``with_attn_mask``).
    """

    def __init__(self, backbone: dict, neck: dict | None = None, query_head: dict | None = None,
                 rpn_head: dict | None = None, roi_head=None, bbox_head=None,
                 train_cfg: list | None = None, test_cfg: list | None = None,
                 with_pos_coord: bool = True, with_attn_mask: bool = True,
                 use_lsj: bool | None = None, eval_module: str = 'detr', eval_index: int = 0,
                 data_preprocessor: dict | None = None, init_cfg=None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if query_head is None:
            raise ValueError('CoDETR needs a query_head')
        if eval_module not in EVAL_MODULES:
            raise ValueError(f'CoDETR: eval_module must be one of {EVAL_MODULES}, '
                             f'got {eval_module!r}')
        for name, cfgs in (('train_cfg', train_cfg), ('test_cfg', test_cfg)):
            if cfgs is not None and not isinstance(cfgs, (list, tuple)):
                raise TypeError(f'CoDETR: model.{name} is a list (query head, rpn/rcnn, ...), '
                                f'got {type(cfgs).__name__}')
        roi_cfgs, dense_cfgs = heads_list(roi_head), heads_list(bbox_head)
        if roi_cfgs and rpn_head is None:
            raise ValueError('CoDETR: roi_head needs an rpn_head for its proposals')
        self.backbone = MODELS.build(backbone)
        self.neck = MODELS.build(neck) if neck is not None else None
        self.query_head = MODELS.build(dict(copy.deepcopy(query_head),
                                            train_cfg=cfg_at(train_cfg, 0),
                                            test_cfg=cfg_at(test_cfg, 0)))
        self.rpn_head = None
        self.rpn_proposal = None
        if rpn_head is not None:
            cfg = split_two_stage_cfg(cfg_at(train_cfg, 1), cfg_at(test_cfg, 1),
                                      'model.train_cfg[1]')
            self.rpn_head = MODELS.build(dict(copy.deepcopy(rpn_head),
                                              train_cfg=cfg['rpn_train'],
                                              test_cfg=cfg['rpn_test']))
            self.rpn_proposal = ProposalRecipe.from_cfg(cfg['rpn_proposal'] or cfg['rpn_test'],
                                                        'model.train_cfg[1].rpn_proposal')
        # The official lists: [query head, roi_head 0 (with the rpn), roi_head 1, ...,
        # bbox_head 0, ...]; auxiliary head k reads entry 1 + k of each.
        self.roi_head = nn.ModuleList()
        self.bbox_head = nn.ModuleList()
        aux_cfgs = ([('roi_head', i, head) for i, head in enumerate(roi_cfgs)]
                    + [('bbox_head', j, head) for j, head in enumerate(dense_cfgs)])
        for k, (kind, i, head) in enumerate(aux_cfgs):
            name = f'{kind}[{i}]'
            train, test = self.aux_cfgs(name, head, train_cfg, test_cfg, 1 + k)
            if kind == 'roi_head':
                cfg = split_two_stage_cfg(train, test, f'model.train_cfg[{1 + k}]')
                train, test = cfg['rcnn_train'], cfg['rcnn_test']
            built = MODELS.build(dict(copy.deepcopy(head), train_cfg=train, test_cfg=test))
            if not isinstance(built, AuxiliaryHead):
                raise TypeError(f'CoDETR: {name} ({type(built).__name__}) is not an auxiliary '
                                'head: it must implement AuxiliaryHead.loss_and_positives '
                                '(e.g. CoStandardRoIHead, CoATSSHead)')
            getattr(self, kind).append(built)
        self.with_pos_coord = with_pos_coord
        self.with_attn_mask = with_attn_mask if use_lsj is None else not use_lsj
        self.eval_module = eval_module
        self.eval_index = eval_index
        if with_pos_coord:
            self.check_positive_query_branches()

    @property
    def aux_heads(self) -> list[nn.Module]:
        """The auxiliary heads in loss-suffix order: RoI heads, then dense heads."""
        return [*self.roi_head, *self.bbox_head]

    @staticmethod
    def aux_cfgs(name: str, head: dict, train_cfg: list | None, test_cfg: list | None,
                 index: int) -> tuple[dict | None, dict | None]:
        """Auxiliary head ``name``'s entries of the cfg lists, which must exist when the list
        does (a model built for inference only has no train_cfg)."""
        entries = []
        for key, cfgs in (('train_cfg', train_cfg), ('test_cfg', test_cfg)):
            entry = cfg_at(cfgs, index)
            if cfgs is not None and entry is None:
                raise ValueError(
                    f"CoDETR: {name} ({head.get('type')}) has no model.{key} entry: it reads "
                    f'model.{key}[{index}] (the list is [query head, roi heads..., dense '
                    f'heads...]), but the list has {len(cfgs)} entries')
            entries.append(entry)
        return entries[0], entries[1]

    def check_positive_query_branches(self) -> None:
        """The query head needs one positive-query branch per auxiliary head."""
        heads = self.aux_heads
        if not heads:
            return
        branches = getattr(self.query_head, 'num_co_heads', None)
        names = [f'roi_head[{i}] ({type(h).__name__})' for i, h in enumerate(self.roi_head)] + [
            f'bbox_head[{j}] ({type(h).__name__})' for j, h in enumerate(self.bbox_head)]
        if branches is None or not hasattr(self.query_head, 'loss_aux'):
            raise TypeError(f'CoDETR: with_pos_coord trains the query head on the positives of '
                            f'{", ".join(names)}, but {type(self.query_head).__name__} has no '
                            'loss_aux/num_co_heads (use CoDeformDETRHead or CoDINOHead)')
        if branches != len(heads):
            at_fault = (f'{", ".join(names[branches:])} would have no branch' if branches <
                        len(heads) else f'{branches - len(heads)} branch(es) would never train')
            raise ValueError(
                f'CoDETR: query_head.transformer.num_co_heads={branches}, but the model has '
                f'{len(heads)} auxiliary heads ({", ".join(names)}): {at_fault}; set '
                f'num_co_heads={len(heads)}')

    def use_padded_canvas(self, data_samples: SampleList) -> None:
        """``with_attn_mask=False``: every image is the whole padded batch input."""
        if not self.with_attn_mask:
            for sample in data_samples:   # set_field: no deep copy, which a traced graph needs
                sample.set_field(sample.metainfo['batch_input_shape'], 'img_shape',
                                 field_type='metainfo')

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        self.use_padded_canvas(data_samples)
        losses, memory_maps = self.query_head.loss_and_memory(self.extract_feat(inputs),
                                                              data_samples)
        proposals = None
        if self.rpn_head is not None:
            if self.rpn_proposal is None:
                raise RuntimeError('CoDETR.loss needs train_cfg[1].rpn_proposal (or '
                                   'test_cfg[1].rpn) to make training proposals')
            rpn_losses, proposals = self.rpn_head.loss_and_predict(memory_maps, data_samples,
                                                                   self.rpn_proposal)
            losses.update(rpn_losses)
        positives = []
        for k, head in enumerate(self.aux_heads):
            out = head.loss_and_positives(memory_maps, data_samples,
                                          proposals if head.needs_proposals else None)
            losses.update(suffixed(out.losses, k))
            positives.append(out.positives)
        if self.with_pos_coord:
            for k, head_positives in enumerate(positives):
                losses.update(suffixed(
                    self.query_head.loss_aux(memory_maps, head_positives, k, data_samples), k))
        return losses

    def predict_in_input_frame(self, inputs: Tensor, data_samples: SampleList
                               ) -> tuple[list[InstanceData], MaskPaste | None]:
        """The evaluated module's results (network input frame) and its mask paste recipe."""
        self.use_padded_canvas(data_samples)
        x = self.extract_feat(inputs)
        if self.eval_module == 'detr':
            return self.query_head.predict(x, data_samples), None
        memory_maps = self.query_head(x, [s.metainfo for s in data_samples])[-1]
        if self.eval_module == 'one-stage':
            return self.aux_head('bbox_head').predict(memory_maps, data_samples), None
        if self.rpn_head is None:
            raise RuntimeError("CoDETR: eval_module='two-stage' needs an rpn_head")
        proposals = self.rpn_head.predict(memory_maps, data_samples)
        head = self.aux_head('roi_head')
        return head.predict(memory_maps, proposals, data_samples), head.mask_paste

    def aux_head(self, name: str) -> nn.Module:
        heads = getattr(self, name)
        if not 0 <= self.eval_index < len(heads):
            raise IndexError(f"CoDETR: eval_module={self.eval_module!r} evaluates "
                             f'{name}[{self.eval_index}], but the model has {len(heads)}')
        return heads[self.eval_index]

    def _forward(self, inputs: Tensor, data_samples: SampleList | None = None):
        if data_samples is None:
            raise ValueError('CoDETR: mode="tensor" needs data_samples (image shapes)')
        return self.query_head(self.extract_feat(inputs), [s.metainfo for s in data_samples])
