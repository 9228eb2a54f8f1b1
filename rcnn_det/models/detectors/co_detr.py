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
from torch import Tensor

from rcnn_det.registry import MODELS
from rcnn_det.structures import SampleList

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
    """loss() -> the query head's one-to-one losses; ``loss_rpn_*``; each RoI head i's losses
    suffixed i; each dense head j's suffixed len(roi_head) + j; and, per auxiliary head k (RoI
    heads first), the query head's positive-query losses suffixed k.

    predict() -> ``eval_module`` 'detr' (the query head), 'one-stage' (``bbox_head[eval_index]``
    on the encoder memory) or 'two-stage' (RPN + ``roi_head[eval_index]`` on it); boxes in the
    original image frame.

    Args:
        with_pos_coord: train the decoder on the auxiliary heads' positives.
        with_attn_mask: False treats the whole padded batch as image (the official option for
            large-scale-jitter training, where padding is part of the augmentation).
    """

    def __init__(self, backbone: dict, neck: dict | None = None, query_head: dict | None = None,
                 rpn_head: dict | None = None, roi_head=None, bbox_head=None,
                 train_cfg: list | None = None, test_cfg: list | None = None,
                 with_pos_coord: bool = True, with_attn_mask: bool = True,
                 eval_module: str = 'detr', eval_index: int = 0,
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
        self.backbone = MODELS.build(backbone)
        self.neck = MODELS.build(neck) if neck is not None else None
        self.query_head = MODELS.build(dict(copy.deepcopy(query_head),
                                            train_cfg=cfg_at(train_cfg, 0),
                                            test_cfg=cfg_at(test_cfg, 0)))
        roi_cfgs, dense_cfgs = heads_list(roi_head), heads_list(bbox_head)
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
        self.roi_head = nn.ModuleList()
        for i, head in enumerate(roi_cfgs):
            cfg = split_two_stage_cfg(cfg_at(train_cfg, 1 + i), cfg_at(test_cfg, 1 + i),
                                      f'model.train_cfg[{1 + i}]')
            self.roi_head.append(MODELS.build(dict(copy.deepcopy(head),
                                                   train_cfg=cfg['rcnn_train'],
                                                   test_cfg=cfg['rcnn_test'])))
        self.bbox_head = nn.ModuleList()
        for j, head in enumerate(dense_cfgs):
            index = 1 + len(roi_cfgs) + j
            self.bbox_head.append(MODELS.build(dict(copy.deepcopy(head),
                                                    train_cfg=cfg_at(train_cfg, index),
                                                    test_cfg=cfg_at(test_cfg, index))))
        if roi_cfgs and self.rpn_head is None:
            raise ValueError('CoDETR: roi_head needs an rpn_head for its proposals')
        self.with_pos_coord = with_pos_coord
        self.with_attn_mask = with_attn_mask
        self.eval_module = eval_module
        self.eval_index = eval_index
        self.train_cfg, self.test_cfg = train_cfg, test_cfg

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        if not self.with_attn_mask:
            for sample in data_samples:   # the padded canvas is the image
                sample.set_metainfo(dict(img_shape=sample.metainfo['batch_input_shape']))
        x = self.extract_feat(inputs)
        losses, x5 = self.query_head.loss(x, data_samples)
        positives = []
        if self.rpn_head is not None:
            if self.rpn_proposal is None:
                raise RuntimeError('CoDETR.loss needs train_cfg[1].rpn_proposal (or '
                                   'test_cfg[1].rpn) to make training proposals')
            rpn_losses, proposals = self.rpn_head.loss_and_predict(x5, data_samples,
                                                                   self.rpn_proposal)
            losses.update(rpn_losses)
        for i, head in enumerate(self.roi_head):
            head_losses, head_positives = head.loss(x5, proposals, data_samples)
            losses.update(suffixed(head_losses, i))
            positives.append(head_positives)
        for j, head in enumerate(self.bbox_head):
            head_losses, head_positives = head.loss(x5, data_samples)
            losses.update(suffixed(head_losses, len(self.roi_head) + j))
            positives.append(head_positives)
        if self.with_pos_coord:
            for k, head_positives in enumerate(positives):
                losses.update(suffixed(
                    self.query_head.loss_aux(x5, head_positives, k, data_samples), k))
        return losses

    def predict(self, inputs: Tensor, data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        x = self.extract_feat(inputs)
        if self.eval_module == 'detr':
            results = self.query_head.predict(x, data_samples, rescale=rescale)
            return self.add_pred_to_datasample(data_samples, results)
        x5 = self.query_head(x, [s.metainfo for s in data_samples])[-1]
        if self.eval_module == 'one-stage':
            results = self.aux_head('bbox_head').predict(x5, data_samples, rescale=rescale)
        else:
            if self.rpn_head is None:
                raise RuntimeError("CoDETR: eval_module='two-stage' needs an rpn_head")
            proposals = self.rpn_head.predict(x5, data_samples, rescale=False)
            results = self.aux_head('roi_head').predict(x5, proposals, data_samples,
                                                        rescale=rescale)
        return self.add_pred_to_datasample(data_samples, results)

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
