"""rcnn_det's registries: children of mmengine's roots, scope ``rcnn_det``.

A config names every part by ``type``; ``MODELS.build(cfg.model)`` (or mmengine's Runner) looks the
name up here first, then in mmengine's root registries, where mmcv's transforms and mmengine's
hooks, optimizers and schedulers live. ``locations`` lists the modules that register each kind, so
nothing has to be imported by hand before building. An unknown ``type`` fails with the registered
names closest to it.
"""
from __future__ import annotations

import difflib

from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import RUNNER_CONSTRUCTORS as MMENGINE_RUNNER_CONSTRUCTORS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import TASK_UTILS as MMENGINE_TASK_UTILS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import WEIGHT_INITIALIZERS as MMENGINE_WEIGHT_INITIALIZERS
from mmengine.registry import Registry


class DetRegistry(Registry):
    """An mmengine ``Registry`` whose failed lookups name the closest registered types."""

    def get(self, key: str):
        obj = super().get(key)
        if obj is None and isinstance(key, str) and '.' not in key:
            raise KeyError(unknown_type_message(self, key))
        return obj


def registered_names(registry: Registry) -> list[str]:
    """Every name reachable from ``registry``: its own, its parents' and its scope siblings'."""
    root = registry
    while root.parent is not None:
        root = root.parent
    names, stack = set(), [root]
    while stack:
        node = stack.pop()
        names.update(node.module_dict)
        stack.extend(node.children.values())
    return sorted(names)


def unknown_type_message(registry: Registry, key: str) -> str:
    registry.import_from_location()
    close = difflib.get_close_matches(key, registered_names(registry), n=5, cutoff=0.6)
    hint = f' Did you mean {", ".join(repr(c) for c in close)}?' if close else ''
    return (f"type '{key}' is not registered in rcnn_det's '{registry.name}' registry "
            f'(nor in its parents).{hint}')


def _child(name: str, parent: Registry, location: str | None = None) -> DetRegistry:
    return DetRegistry(name, parent=parent, scope='rcnn_det',
                       locations=[location] if location else None)


RUNNERS = _child('runner', MMENGINE_RUNNERS)
RUNNER_CONSTRUCTORS = _child('runner constructor', MMENGINE_RUNNER_CONSTRUCTORS)
LOOPS = _child('loop', MMENGINE_LOOPS, 'rcnn_det.engine')
HOOKS = _child('hook', MMENGINE_HOOKS, 'rcnn_det.engine')
DATASETS = _child('dataset', MMENGINE_DATASETS, 'rcnn_det.datasets')
DATA_SAMPLERS = _child('data sampler', MMENGINE_DATA_SAMPLERS, 'rcnn_det.datasets')
TRANSFORMS = _child('transform', MMENGINE_TRANSFORMS, 'rcnn_det.datasets.transforms')
MODELS = _child('model', MMENGINE_MODELS, 'rcnn_det.models')
MODEL_WRAPPERS = _child('model_wrapper', MMENGINE_MODEL_WRAPPERS, 'rcnn_det.models')
WEIGHT_INITIALIZERS = _child('weight initializer', MMENGINE_WEIGHT_INITIALIZERS, 'rcnn_det.models')
OPTIMIZERS = _child('optimizer', MMENGINE_OPTIMIZERS, 'rcnn_det.engine')
OPTIM_WRAPPERS = _child('optim_wrapper', MMENGINE_OPTIM_WRAPPERS, 'rcnn_det.engine')
OPTIM_WRAPPER_CONSTRUCTORS = _child('optimizer wrapper constructor',
                                    MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, 'rcnn_det.engine')
PARAM_SCHEDULERS = _child('parameter scheduler', MMENGINE_PARAM_SCHEDULERS, 'rcnn_det.engine')
METRICS = _child('metric', MMENGINE_METRICS, 'rcnn_det.evaluation')
EVALUATOR = _child('evaluator', MMENGINE_EVALUATOR, 'rcnn_det.evaluation')
TASK_UTILS = _child('task util', MMENGINE_TASK_UTILS, 'rcnn_det.models')
VISUALIZERS = _child('visualizer', MMENGINE_VISUALIZERS, 'rcnn_det.visualization')
VISBACKENDS = _child('vis_backend', MMENGINE_VISBACKENDS, 'rcnn_det.visualization')
LOG_PROCESSORS = _child('log_processor', MMENGINE_LOG_PROCESSORS, 'rcnn_det.engine')
