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


NMS_TYPES = ('nms', 'soft_nms')
SOFT_NMS_METHODS = ('linear', 'gaussian', 'naive')
# mmcv's defaults (mmcv/ops/nms.py): soft_nms(iou_threshold=0.3, sigma=0.5, min_score=1e-3,
# method='linear'); hard NMS has no default threshold there, rcnn_det's NMSConfig() uses 0.5
DEFAULT_IOU_THRESHOLD = {'nms': 0.5, 'soft_nms': 0.3}
SOFT_NMS_ONLY = ('sigma', 'min_score', 'method')


@dataclasses.dataclass(frozen=True)
class NMSConfig:
    """mmdet's ``nms=dict(type='nms', iou_threshold=...)`` or ``nms=dict(type='soft_nms',
    iou_threshold=0.3, sigma=0.5, min_score=1e-3, method='linear')``, with mmcv's defaults.

    Soft-NMS (mmcv's ``soft_nms``) decays the scores of the boxes that overlap a kept one
    instead of removing them, and drops a box once its score falls below ``min_score``. Per
    overlap ``iou`` with the kept box: 'linear' multiplies by 1 - iou when iou >= the
    threshold, 'naive' by 0 when iou >= the threshold (hard NMS, but with ``>=``), 'gaussian'
    always by exp(-iou^2 / sigma). ``sigma``, ``min_score`` and ``method`` belong to soft-NMS
    only. ``split_thr``, a speed knob of mmcv's batched_nms, is accepted and unused.
    """
    type: str = 'nms'
    iou_threshold: float | None = None   # None: 0.5 for 'nms', mmcv's 0.3 for 'soft_nms'
    sigma: float = 0.5
    min_score: float = 1e-3
    method: str = 'linear'

    def __post_init__(self) -> None:
        if self.type not in NMS_TYPES:
            close = difflib.get_close_matches(str(self.type), NMS_TYPES, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ''
            raise ValueError(f'nms: type must be one of {NMS_TYPES}, got {self.type!r}{hint}')
        if self.iou_threshold is None:
            object.__setattr__(self, 'iou_threshold', DEFAULT_IOU_THRESHOLD[self.type])
        if self.method not in SOFT_NMS_METHODS:
            raise ValueError(f'nms: method must be one of {SOFT_NMS_METHODS}, got '
                             f'{self.method!r}')
        if self.method == 'gaussian' and not self.sigma > 0:
            raise ValueError(f"nms: method='gaussian' needs sigma > 0, got {self.sigma!r}")

    @classmethod
    def from_cfg(cls, cfg: dict | NMSConfig | None, where: str) -> NMSConfig:
        if isinstance(cfg, cls):
            return cfg
        if cfg is None:
            raise KeyError(f"{where}: missing 'nms' (e.g. nms=dict(type='nms', "
                           'iou_threshold=0.5))')
        cfg = dict(cfg)
        cfg.pop('split_thr', None)
        nms_type = cfg.get('type', 'nms')
        if nms_type == 'nms':
            # mmcv's hard nms() takes no default threshold and no soft-NMS argument
            if 'iou_threshold' not in cfg:
                raise KeyError(f"{where}.nms: missing 'iou_threshold'")
            for key in SOFT_NMS_ONLY:
                if key in cfg:
                    raise ValueError(f"{where}.nms: '{key}' applies to type='soft_nms' only, "
                                     "not to type='nms'")
        try:
            return read_dataclass(cls, cfg, f'{where}.nms')
        except ValueError as err:
            raise ValueError(f'{where}.{err}') from None


def read_nms_recipe(cls: type[T], cfg: dict | T | None, where: str) -> T | None:
    """A recipe dataclass with an ``nms: NMSConfig`` field from an mmdet dict; an already-built
    recipe passes through."""
    if cfg is None or isinstance(cfg, cls):
        return cfg
    cfg = dict(cfg)
    nms = cfg.pop('nms', None)
    recipe = read_dataclass(cls, cfg, where)
    return dataclasses.replace(recipe, nms=NMSConfig.from_cfg(nms, where))


SIZE_FRAMES = ('input', 'original')


def check_size_frame(frame: str, where: str) -> None:
    if frame not in SIZE_FRAMES:
        raise ValueError(f'{where}.size_frame must be one of {SIZE_FRAMES}, got {frame!r}')


@dataclasses.dataclass(frozen=True)
class ProposalRecipe:
    """How the RPN turns its outputs into proposals (mmdet's ``rpn_proposal`` /
    ``test_cfg.rpn``)."""
    nms_pre: int = 1000          # top-scoring anchors kept per level before NMS
    max_per_img: int = 1000      # proposals kept per image after NMS
    nms: NMSConfig = NMSConfig(iou_threshold=0.7)   # per level (mmdet and torchvision alike)
    min_bbox_size: float = -1    # boxes with w or h <= this are dropped (< 0: keep all)
    score_thr: float = 0.0       # proposals with a lower objectness are dropped (torchvision)
    # the frame min_bbox_size is measured in: 'input' for proposals of a second stage (mmdet's
    # rescale=False), 'original' for an RPN's final results (mmdet's RPN detector)
    size_frame: str = 'input'

    def __post_init__(self) -> None:
        check_size_frame(self.size_frame, 'ProposalRecipe')

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
    nms: NMSConfig = NMSConfig(iou_threshold=0.5)
    max_per_img: int = 100
    mask_thr_binary: float = 0.5
    # boxes with w or h <= this (network-input pixels, as torchvision) are dropped before NMS
    min_bbox_size: float = -1    # < 0: none
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
    nms: NMSConfig = NMSConfig(iou_threshold=0.5)
    max_per_img: int = 100
    # mmdet measures min_bbox_size in the original image for final detections ('original');
    # 'input' measures it in the network input
    size_frame: str = 'original'

    def __post_init__(self) -> None:
        check_size_frame(self.size_frame, 'DenseDetectionRecipe')

    @classmethod
    def from_cfg(cls, cfg: dict | DenseDetectionRecipe | None, where: str
                 ) -> DenseDetectionRecipe | None:
        return read_nms_recipe(cls, cfg, where)
