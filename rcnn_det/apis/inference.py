"""Predictions without a runner: ``init_detector`` builds a trained detector, ``inference_detector``
runs it on image files or in-memory images.

mmdetection 3.x's API. ``inference_detector`` returns, per image, a ``DetDataSample`` whose
``pred_instances`` are in the ORIGINAL image's frame (shape letters: N detections, H x W the
image as given, C classes):
    bboxes (N, 4) float32 xyxy px, scores (N,) float32, labels (N,) int64 in [0, C),
    masks (N, H, W) bool (Mask R-CNN only)
and whose metainfo holds ``img_id`` (the index in the input list), ``img_path`` (None for an
array), ``ori_shape``, ``img_shape``, ``scale_factor`` and the batch padding.
Class names are in ``model.dataset_meta['classes']``.
"""
from __future__ import annotations

import copy
import os
import os.path as osp
import warnings
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import DefaultScope
from torch import nn

from rcnn_det.datasets import distinct_palette
from rcnn_det.engine import load_checkpoint_file, load_state_dict_strict
from rcnn_det.registry import DATASETS, MODELS
from rcnn_det.structures import DetDataSample

ImageInput = Union[str, os.PathLike, np.ndarray]
# Loader types a test pipeline may start with; the inference pipeline picks the one for its input.
FILE_LOADER, ARRAY_LOADER = 'LoadImageFromFile', 'LoadImageFromNDArray'


def _type_name(transform: dict) -> str:
    """A transform's type without its scope ('mmdet.LoadAnnotations' -> 'LoadAnnotations'); the
    class name for a type given as a class."""
    name = transform.get('type', '')
    return name.rsplit('.', 1)[-1] if isinstance(name, str) else getattr(name, '__name__', '')


def _test_dataset_cfg(cfg: Config) -> dict:
    """The test dataset's config, under any dataset wrappers (``dataset=dict(dataset=...)``)."""
    dataset = (cfg.get('test_dataloader') or {}).get('dataset') or {}
    while 'pipeline' not in dataset and isinstance(dataset.get('dataset'), dict):
        dataset = dataset['dataset']
    return dataset


def load_config(config: str | os.PathLike | Config, cfg_options: dict | None = None) -> Config:
    """A config file path or ``Config`` -> a ``Config`` (a copy) with ``cfg_options`` merged."""
    if isinstance(config, (str, os.PathLike)):
        if not osp.isfile(config):
            raise FileNotFoundError(f'config file not found: {config}')
        config = Config.fromfile(str(config))
    elif isinstance(config, Config):
        config = copy.deepcopy(config)
    else:
        raise TypeError(f'config must be a file path or an mmengine Config, got '
                        f'{type(config).__name__}')
    if cfg_options:
        config.merge_from_dict(cfg_options)
    if 'model' not in config:
        raise KeyError(f'{config.filename or "config"}: no model to build (missing key '
                       "'model')")
    return config


def inference_pipeline(cfg: Config, from_array: bool = False) -> Compose:
    """The config's test pipeline for images without annotations.

    ``LoadAnnotations`` is dropped (there is no ground truth to load) and the loader is the one
    for the input: ``LoadImageFromFile`` for paths, ``LoadImageFromNDArray`` for (H, W, 3) BGR
    arrays. Everything else (resize, padding, ``PackDetInputs`` and its meta keys) is the
    config's, so predictions match those of ``tools/test.py`` on the same image.
    """
    dataset = _test_dataset_cfg(cfg)
    transforms = dataset.get('pipeline', cfg.get('test_pipeline'))
    where = cfg.filename or 'config'
    if not transforms:
        raise KeyError(f'{where}: no test pipeline (test_dataloader.dataset.pipeline) to '
                       'prepare images with')
    transforms = [copy.deepcopy(dict(t)) for t in transforms
                  if _type_name(t) != 'LoadAnnotations']
    loaders = [i for i, t in enumerate(transforms) if _type_name(t) in (FILE_LOADER, ARRAY_LOADER)]
    if not loaders:
        raise KeyError(f'{where}: the test pipeline has no {FILE_LOADER} to load images with '
                       f'(its transforms: {[_type_name(t) for t in transforms]})')
    loader = transforms[loaders[0]]
    if from_array:
        transforms[loaders[0]] = dict(type=ARRAY_LOADER, to_float32=loader.get('to_float32', False))
    elif _type_name(loader) == ARRAY_LOADER:
        transforms[loaders[0]] = dict(type=FILE_LOADER, to_float32=loader.get('to_float32', False))
    # mmcv's wrappers (RandomChoiceResize, TestTimeAug, ...) build their inner transforms from
    # the default scope's registry: rcnn_det's Resize, not mmcv's, as in the runner.
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope') or 'rcnn_det'):
        return Compose(transforms)


def checkpoint_dataset_meta(meta: dict) -> dict:
    """Dataset meta saved in a checkpoint's ``meta``: mmengine's ``dataset_meta`` (keys lower-
    cased, as mmdetection reads them) or mmdetection 2.x's ``CLASSES``; {} when neither."""
    if isinstance(meta.get('dataset_meta'), dict):
        return {str(k).lower(): v for k, v in meta['dataset_meta'].items()}
    if meta.get('CLASSES') is not None:
        return dict(classes=meta['CLASSES'])
    return {}


def config_dataset_meta(cfg: Config) -> dict:
    """The test dataset's metainfo: its class's ``METAINFO`` updated by the config's
    ``metainfo`` (what the dataset itself would report, without reading its annotations)."""
    dataset = _test_dataset_cfg(cfg)
    meta = {}
    if isinstance(dataset.get('type'), str):
        try:
            meta.update(getattr(DATASETS.get(dataset['type']), 'METAINFO', None) or {})
        except KeyError:  # an unknown dataset type: the config's own metainfo still counts
            pass
    meta.update(dataset.get('metainfo') or {})
    return meta


def complete_dataset_meta(meta: dict) -> dict:
    """``classes`` as a tuple and a ``palette`` of one colour per class (the datasets' rule)."""
    meta = dict(meta)
    if meta.get('classes') is not None:
        meta['classes'] = tuple(meta['classes'])
        palette = meta.get('palette')
        if palette is None or len(palette) != len(meta['classes']):
            meta['palette'] = distinct_palette(len(meta['classes']))
    return meta


def read_checkpoint(checkpoint: str | os.PathLike) -> dict:
    """Read an mmengine checkpoint (``state_dict`` + ``meta``) or a bare state dict, local or at
    a URL mmengine's file backends read -> dict(state_dict=..., meta=... or {}).

    ``load_checkpoint_file``: ``torch.load(weights_only=True)`` with rcnn_det's allow-list of the
    types mmengine stores, so a checkpoint that holds anything else is refused, never unpickled;
    every error names the file.
    """
    loaded = load_checkpoint_file(checkpoint)
    meta = loaded.get('meta') if 'state_dict' in loaded else None
    return dict(state_dict=loaded.get('state_dict', loaded),
                meta=meta if isinstance(meta, dict) else {})


def init_detector(config: str | os.PathLike | Config, checkpoint: str | os.PathLike | None = None,
                  device: str | torch.device = 'cpu', cfg_options: dict | None = None) -> nn.Module:
    """Build the detector of ``config``, load ``checkpoint`` into it, and ready it for inference.

    Args:
        config: a config file path or an mmengine ``Config``.
        checkpoint: an mmengine checkpoint (see ``read_checkpoint``); None keeps random
            weights; a ``.onnx`` file of ``tools/deployment/export_onnx.py`` gives an
            ``OnnxDetector`` that runs it with onnxruntime (``init_onnx_detector``). A
            checkpoint must fit the model exactly (``load_state_dict_strict``: DDP's
            ``module.`` prefix is dropped, mmdetection 3.x Deformable DETR names are renamed
            by the model).
        device: where the model runs ('cpu', 'cuda', 'cuda:1', ...).
        cfg_options: config overrides, ``--cfg-options`` style (``{'model.test_cfg.rcnn.
            score_thr': 0.5}``).
    Raises FileNotFoundError for a missing checkpoint and ``rcnn_det.engine.CheckpointError``
    (``CheckpointMismatchError`` for one that does not fit, listing the keys and shapes that
    differ; ``CheckpointRefusedError``, also a ``pickle.UnpicklingError``, for one holding types
    outside the allow-list), each naming the file.
    Returns the model in eval mode with ``model.cfg`` (the config) and ``model.dataset_meta``
    (``classes`` and ``palette``: from the checkpoint's ``meta['dataset_meta']`` if it has
    classes, else from the config's test dataset; a warning when neither names them).
    """
    cfg = load_config(config, cfg_options)
    if checkpoint is not None and str(checkpoint).endswith('.onnx'):
        return init_onnx_detector(cfg, checkpoint, device)
    # A bad checkpoint file fails before the model is built.
    loaded = None if checkpoint is None else read_checkpoint(checkpoint)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope') or 'rcnn_det'):
        model = MODELS.build(cfg.model)
    # A SyncBN config trained on many GPUs runs here in one process: plain BatchNorm is the same
    # computation in eval mode and needs no process group.
    model = revert_sync_batchnorm(model)
    meta = {}
    if loaded is not None:  # every key and shape must fit: another model fails, naming the file
        load_state_dict_strict(model, loaded['state_dict'], str(checkpoint))
        meta = checkpoint_dataset_meta(loaded['meta'])
    if meta.get('classes') is None:
        meta = {**meta, **config_dataset_meta(cfg)}
    if meta.get('classes') is None:
        warnings.warn(f'init_detector: neither the checkpoint nor {cfg.filename or "the config"} '
                      "names the classes; labels are reported as numbers ('class 3').")
    model.cfg = cfg
    model.dataset_meta = complete_dataset_meta(meta)
    model.to(device)
    model.eval()
    return model


def init_onnx_detector(cfg: Config, file: str | os.PathLike, device: str | torch.device = 'cpu'):
    """``init_detector`` for a file of ``tools/deployment/export_onnx.py``: an ``OnnxDetector``
    (onnxruntime; the ``deploy`` extra) with the config's pipeline and preprocessing, and the
    classes saved in the file (else the config's)."""
    if not osp.isfile(file):
        raise FileNotFoundError(f'ONNX file not found: {file}')
    from rcnn_det.deployment.onnx_runtime import OnnxDetector

    model = OnnxDetector(file, cfg, device)
    meta = dict(model.metadata.get('dataset_meta') or {})
    if meta.get('classes') is None:
        meta = {**meta, **config_dataset_meta(cfg)}
    model.dataset_meta = complete_dataset_meta(meta)
    return model


def _packed_input(item: ImageInput, img_id: int, pipelines: dict) -> dict:
    """One image through the inference pipeline for its kind -> dict(inputs, data_samples)."""
    if isinstance(item, np.ndarray):
        results = pipelines[True](dict(img=item, img_id=img_id))
        name = f'array {img_id}'
    elif isinstance(item, (str, os.PathLike)):
        results = pipelines[False](dict(img_path=str(item), img_id=img_id))
        name = str(item)
    else:
        raise TypeError(f'inference_detector: image {img_id} is a {type(item).__name__}; expected '
                        'a file path or an (H, W, 3) BGR numpy array')
    if results is None:  # a loader with ignore_empty=True skipped it
        raise OSError(f'cannot read image {name}')
    return results


class _LazyPipelines(dict):
    """{from_array: Compose}, each built on first use (a list may mix paths and arrays)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg

    def __missing__(self, from_array: bool) -> Compose:
        self[from_array] = inference_pipeline(self.cfg, from_array)
        return self[from_array]


def inference_detector(model: nn.Module, images: ImageInput | Sequence[ImageInput],
                       batch_size: int | None = None) -> DetDataSample | list[DetDataSample]:
    """Predict on one image or a list of them.

    Args:
        model: a detector from ``init_detector`` (it needs ``model.cfg``).
        images: an image file path, an (H, W, 3) BGR uint8 numpy array (``mmcv.imread`` /
            ``cv2.imread``'s layout), or a list or tuple of them (mixing both is fine).
        batch_size: images per forward pass; None: the config's ``test_dataloader.batch_size``
            (1 if it has none). Images of a batch are padded to a common size, as in
            ``tools/test.py``; ``batch_size=1`` makes each image's result independent of the
            others (mmdetection's behaviour).
    Returns a ``DetDataSample`` for a single image, a list (in input order) for a list. The
    predictions stay on the model's device.
    """
    cfg = getattr(model, 'cfg', None)
    if not isinstance(cfg, Config):
        raise TypeError('inference_detector: the model has no config (model.cfg); build it with '
                        'init_detector')
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    if batch_size is None:
        batch_size = (cfg.get('test_dataloader') or {}).get('batch_size') or 1
    if batch_size < 1:
        raise ValueError(f'inference_detector: batch_size must be >= 1, got {batch_size}')
    pipelines = _LazyPipelines(cfg)
    predictions = []
    for start in range(0, len(items), batch_size):
        packed = [_packed_input(item, start + i, pipelines)
                  for i, item in enumerate(items[start:start + batch_size])]
        data = dict(inputs=[p['inputs'] for p in packed],
                    data_samples=[p['data_samples'] for p in packed])
        with torch.no_grad():
            predictions.extend(model.test_step(data))
    return predictions[0] if single else predictions
