"""Reading config dicts once, at build time, into plain objects.

mmdetection hands heads their recipes (``train_cfg``, ``test_cfg``, ``proposal_cfg``) as nested
dicts and reads them with ``cfg.get`` deep inside forward code, where a misspelled key is silently
ignored. rcnn_det reads each recipe in ``__init__``: unknown keys fail at build time with the
config path and the closest accepted name, and forward code sees frozen dataclasses.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, TypeVar

from mmengine.registry import Registry

T = TypeVar('T')


def build_or_pass(registry: Registry, cfg_or_obj: Any, default_args: dict | None = None) -> Any:
    """Build ``cfg_or_obj`` when it is a config dict; pass an already-built object through."""
    if cfg_or_obj is None or not isinstance(cfg_or_obj, dict):
        return cfg_or_obj
    return registry.build(cfg_or_obj, default_args=default_args)


def unknown_key_error(where: str, key: str, accepted: list[str]) -> KeyError:
    close = difflib.get_close_matches(key, accepted, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f'; accepted keys: {sorted(accepted)}'
    return KeyError(f"{where}: unknown key '{key}'{hint}")


class RecipeReader:
    """Pops keys off a recipe dict; ``reject_rest()`` raises on whatever nobody asked for."""

    def __init__(self, cfg: dict | None, where: str, accepted_no_op: tuple[str, ...] = ()) -> None:
        self.where = where
        self._cfg = dict(cfg or {})
        self._asked: list[str] = list(accepted_no_op)
        for key in accepted_no_op:
            self._cfg.pop(key, None)

    def pop(self, key: str, default: Any = dataclasses.MISSING) -> Any:
        self._asked.append(key)
        if key in self._cfg:
            return self._cfg.pop(key)
        if default is dataclasses.MISSING:
            raise KeyError(f"{self.where}: missing required key '{key}'")
        return default

    def build(self, key: str, registry: Registry, default: Any = dataclasses.MISSING) -> Any:
        return build_or_pass(registry, self.pop(key, default))

    def reject_rest(self) -> None:
        for key in self._cfg:
            raise unknown_key_error(self.where, key, self._asked)


def read_dataclass(cls: type[T], cfg: dict | T | None, where: str) -> T | None:
    """``cls(**cfg)`` with a clear error naming ``where`` for an unknown key."""
    if cfg is None or isinstance(cfg, cls):
        return cfg
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in cfg:
        if key not in fields:
            raise unknown_key_error(where, key, fields)
    return cls(**cfg)


def read_nms_cfg(nms: dict | None, where: str) -> float:
    """mmdet's ``nms=dict(type='nms', iou_threshold=0.7)`` -> the IoU threshold."""
    if nms is None:
        raise KeyError(f"{where}: missing 'nms' (e.g. nms=dict(type='nms', iou_threshold=0.5))")
    nms = dict(nms)
    kind = nms.pop('type', 'nms')
    if kind != 'nms':
        raise ValueError(f"{where}.nms: only type='nms' is supported, got {kind!r}")
    iou = nms.pop('iou_threshold', None)
    if iou is None:
        raise KeyError(f"{where}.nms: missing 'iou_threshold'")
    nms.pop('split_thr', None)  # a speed knob of mmcv's batched_nms; torchvision needs none
    for key in nms:
        raise unknown_key_error(f'{where}.nms', key, ['type', 'iou_threshold'])
    return float(iou)


def read_nms_recipe(cls: type[T], cfg: dict | T | None, where: str) -> T | None:
    """A recipe dataclass with an ``iou_threshold`` field from an mmdet dict whose NMS is
    ``nms=dict(type='nms', iou_threshold=...)``; an already-built recipe passes through."""
    if cfg is None or isinstance(cfg, cls):
        return cfg
    cfg = dict(cfg)
    nms = cfg.pop('nms', None)
    recipe = read_dataclass(cls, cfg, where)
    return dataclasses.replace(recipe, iou_threshold=read_nms_cfg(nms, where))


@dataclasses.dataclass(frozen=True)
class ProposalRecipe:
    """How the RPN turns its outputs into proposals (mmdet's ``rpn_proposal`` /
    ``test_cfg.rpn``)."""
    nms_pre: int = 1000          # top-scoring anchors kept per level before NMS
    max_per_img: int = 1000      # proposals kept per image after NMS
    iou_threshold: float = 0.7   # NMS IoU threshold, per level (mmdet and torchvision alike)
    min_bbox_size: float = -1    # boxes with w or h <= this are dropped (< 0: keep all)
    score_thr: float = 0.0       # proposals with a lower objectness are dropped

    @classmethod
    def from_cfg(cls, cfg: dict | ProposalRecipe | None, where: str) -> ProposalRecipe | None:
        if isinstance(cfg, dict) and ('max_num' in cfg or 'nms_thr' in cfg):
            raise KeyError(f'{where}: max_num / nms_thr are mmdet 2.x keys; use max_per_img and '
                           "nms=dict(type='nms', iou_threshold=...)")
        return read_nms_recipe(cls, cfg, where)


@dataclasses.dataclass(frozen=True)
class DetectionRecipe:
    """Per-class NMS of a box head's outputs (mmdet's ``test_cfg.rcnn``), and how masks are
    pasted. ``min_bbox_size`` and ``mask_paste`` are rcnn_det's, for torchvision's behaviour:
    torchvision drops boxes smaller than 1e-2 px before NMS and pastes masks its own way
    (``paste_masks``: 'mmdet' or 'torchvision')."""
    score_thr: float = 0.05
    iou_threshold: float = 0.5
    max_per_img: int = 100
    mask_thr_binary: float = 0.5
    min_bbox_size: float = -1    # boxes with w or h <= this are dropped before NMS (< 0: none)
    mask_paste: str = 'mmdet'

    def __post_init__(self) -> None:
        if self.mask_paste not in ('mmdet', 'torchvision'):
            raise ValueError(f"test_cfg.rcnn.mask_paste must be 'mmdet' or 'torchvision', "
                             f'got {self.mask_paste!r}')

    @classmethod
    def from_cfg(cls, cfg: dict | DetectionRecipe | None, where: str) -> DetectionRecipe | None:
        return read_nms_recipe(cls, cfg, where)


@dataclasses.dataclass(frozen=True)
class DenseDetectionRecipe:
    """How a one-stage head turns its outputs into detections (mmdet's single-stage
    ``test_cfg``): per level, the ``nms_pre`` best (anchor, class) pairs above ``score_thr``;
    then boxes with a side <= ``min_bbox_size`` dropped, per-class NMS, ``max_per_img`` best."""
    nms_pre: int = -1            # < 0: every pair above score_thr
    min_bbox_size: float = -1    # < 0: keep all
    score_thr: float = 0.0
    iou_threshold: float = 0.5
    max_per_img: int = 100

    @classmethod
    def from_cfg(cls, cfg: dict | DenseDetectionRecipe | None, where: str
                 ) -> DenseDetectionRecipe | None:
        return read_nms_recipe(cls, cfg, where)
