"""Run an exported detector with onnxruntime, behind the same API as a checkpoint's model.

``OnnxDetector`` is what ``rcnn_det.apis.init_detector(config, 'model.onnx')`` returns: it
prepares images with the config's test pipeline and ``data_preprocessor`` (in PyTorch, as for
a checkpoint), runs the graph, and pastes Mask R-CNN's masks into the original image, so
``inference_detector`` and ``tools/infer.py`` give the same ``DetDataSample`` predictions
(boxes of the original image, scores, labels, masks) as with the checkpoint.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from rcnn_det.models.post_processing import MaskPaste, paste_mask_probs
from rcnn_det.registry import MODELS
from rcnn_det.structures import SampleList, meta_pairs

from .onnx_export import METADATA_KEY, detections_to_results


def read_metadata(session, file: str | os.PathLike) -> dict:
    """The ``rcnn_det`` metadata ``export_onnx`` wrote into the file."""
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ValueError(f'{file}: not an ONNX file written by rcnn_det (tools/deployment/'
                         f'export_onnx.py): its metadata has no {METADATA_KEY!r} entry')
    return json.loads(props[METADATA_KEY])


def execution_providers(device: str | torch.device) -> list[str]:
    """onnxruntime's providers for ``device``: CUDA first when asked for and present."""
    import onnxruntime

    if str(device).startswith('cuda'):
        if 'CUDAExecutionProvider' not in onnxruntime.get_available_providers():
            raise RuntimeError(f'device {device!r}: this onnxruntime has no CUDA provider '
                               '(pip install onnxruntime-gpu)')
        return ['CUDAExecutionProvider', 'CPUExecutionProvider']
    return ['CPUExecutionProvider']


class OnnxDetector:
    """An exported detector with a detector's inference interface (``cfg``, ``dataset_meta``,
    ``test_step``, ``eval``, ``to``)."""

    def __init__(self, file: str | os.PathLike, cfg: Config, device: str | torch.device = 'cpu'
                 ) -> None:
        import onnxruntime  # the `deploy` extra

        self.file, self.cfg = str(file), cfg
        self.session = onnxruntime.InferenceSession(self.file,
                                                    providers=execution_providers(device))
        self.metadata = read_metadata(self.session, self.file)
        self.batch_size = int(self.metadata['batch_size'])
        paste = self.metadata.get('mask_paste')
        self.mask_paste = MaskPaste(**paste) if paste else None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        preprocessor = cfg.model.get('data_preprocessor') or dict(type='DetDataPreprocessor')
        with DefaultScope.overwrite_default_scope(cfg.get('default_scope') or 'rcnn_det'):
            self.data_preprocessor = MODELS.build(preprocessor)
        self.dataset_meta: dict = {}

    def eval(self) -> OnnxDetector:
        return self

    def to(self, device) -> OnnxDetector:
        return self

    def test_step(self, data: dict) -> SampleList:
        """dict(inputs=[uint8 (3, H, W)], data_samples=[...]) as the test dataloader gives
        -> the samples with ``pred_instances`` in the original image's frame. The graph's batch
        size is fixed: images go through it ``batch_size`` at a time (a short last batch is
        filled with copies of its last image, whose results are dropped)."""
        inputs, samples = list(data['inputs']), list(data['data_samples'])
        for start in range(0, len(samples), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            self._predict(inputs[chunk], samples[chunk])
        return samples

    def _predict(self, inputs: list, samples: SampleList) -> None:
        count = len(samples)
        filler = self.batch_size - count
        batch = self.data_preprocessor(dict(inputs=inputs + inputs[-1:] * filler,
                                            data_samples=samples + [samples[-1].clone()] * filler),
                                       False)
        metas = [s.metainfo for s in batch['data_samples']]
        feed = dict(images=batch['inputs'].float().numpy(),
                    img_shapes=meta_pairs(metas, 'img_shape', 'cpu', torch.long).numpy(),
                    scale_factors=meta_pairs(metas, 'scale_factor', 'cpu').numpy())
        outputs = self.session.run(None, {name: feed[name] for name in self.input_names})
        outputs = {name: torch.from_numpy(np.asarray(value))
                   for name, value in zip(self.output_names, outputs)}
        results = detections_to_results(outputs, count)
        results = paste_mask_probs(results, metas[:count], 'ori_shape', self.mask_paste)
        for sample, result in zip(samples, results):
            sample.pred_instances = result
