"""Export a detector to ONNX with its test-time post-processing in the graph.

The graph is the detector's ``predict_in_input_frame`` (backbone, neck, heads, box decoding,
score filtering, NMS as ONNX ``NonMaxSuppression``, top-k) followed by ``rescale_boxes``,
traced by PyTorch's TorchScript-based ONNX exporter. Shape letters: B images (fixed when
exporting), H x W the padded batch input (dynamic with ``dynamic=True``), N detections of the
whole batch, S the RoI mask size.

Inputs (what ``DetDataPreprocessor`` makes of the test pipeline's output):
    images        (B, 3, H, W) float32: normalised, RGB or BGR as the config says, padded
    img_shapes    (B, 2) int64: each image's (h, w) inside the padding, after the resize
    scale_factors (B, 2) float32: each image's resize factors (w, h) from the original image
Outputs:
    boxes (N, 4) float32 xyxy in ORIGINAL image pixels, scores (N,) float32, labels (N,) int64,
    batch_ids (N,) int64 (the image of each detection; image by image, best first), and for
    Mask R-CNN masks (N, S, S) float32: each detection's mask probabilities over its box, to be
    pasted into the image (``paste_mask_probs``; the recipe is in the file's metadata).

Why the TorchScript-based exporter: ``torch.export`` (``dynamo=True``) must bound every
data-dependent size (the boxes above a score threshold, the survivors of NMS) and cannot trace
mmengine's data containers; the tracer records those sizes as ONNX ``NonZero``/``TopK``/
``NonMaxSuppression`` outputs. Python control flow is fixed at export time: the batch size,
the number of feature levels and which branches run.
"""
from __future__ import annotations

import json
import os
import warnings

import torch
from mmengine.structures import InstanceData
from torch import Tensor, nn

from rcnn_det.models.layers.ms_deform_attn import deform_attn_sampling
from rcnn_det.models.post_processing import MaskPaste, rescale_boxes
from rcnn_det.structures import DetDataSample

INPUT_NAMES = ('images', 'img_shapes', 'scale_factors')
OUTPUT_NAMES = ('boxes', 'scores', 'labels', 'batch_ids')
MASK_OUTPUT = 'masks'
DEFAULT_OPSET = 17   # RoiAlign with half-pixel coordinates needs >= 16
METADATA_KEY = 'rcnn_det'


class ExportableDetector(nn.Module):
    """A detector as a function of tensors: ``forward(images, img_shapes, scale_factors)`` ->
    the flat detections of the batch (see the module docstring)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.mask_paste: MaskPaste | None = None   # the detector's, known after one forward

    def forward(self, images: Tensor, img_shapes: Tensor, scale_factors: Tensor
                ) -> tuple[Tensor, ...]:
        batch_input_shape = torch._shape_as_tensor(images)[-2:]
        samples = [sample_of(img_shape=img_shapes[i], ori_shape=img_shapes[i],
                             scale_factor=scale_factors[i], batch_input_shape=batch_input_shape,
                             pad_shape=batch_input_shape)
                   for i in range(images.shape[0])]
        results, self.mask_paste = self.detector.predict_in_input_frame(images, samples)
        results = rescale_boxes(results, [s.metainfo for s in samples])
        outputs = [torch.cat([r.bboxes for r in results]), torch.cat([r.scores for r in results]),
                   torch.cat([r.labels for r in results]),
                   torch.cat([torch.full_like(r.labels, i) for i, r in enumerate(results)])]
        if self.mask_paste is not None:
            outputs.append(torch.cat([r.mask_probs for r in results]))
        return tuple(outputs)


def sample_of(**metainfo) -> DetDataSample:
    """A sample whose metainfo holds these very values: ``set_metainfo`` deep-copies, which
    cuts the tensors of a traced graph off from its inputs."""
    sample = DetDataSample()
    for name, value in metainfo.items():
        sample.set_field(value, name, field_type='metainfo')
    return sample


def export_onnx(detector: nn.Module, file: str | os.PathLike, input_shape: tuple[int, int],
                batch_size: int = 1, dynamic: bool = False, opset: int = DEFAULT_OPSET,
                dataset_meta: dict | None = None, deform_attn: str = 'grid_sample') -> dict:
    """Write ``detector`` (in eval mode, on the CPU) to ``file``.

    Args:
        input_shape: (H, W) of the padded input traced with (any size works when ``dynamic``).
        batch_size: images per run; fixed in the graph.
        dynamic: H and W of ``images`` (and so the number of detections) vary at run time.
        dataset_meta: ``classes`` (and ``palette``) saved in the file's metadata.
        deform_attn: how multi-scale deformable attention samples in the graph: 'grid_sample'
            (ONNX ``GridSample``) or 'gather' (``Gather`` of the four neighbours; for runtimes
            whose ``GridSample`` is wrong or missing, such as some TensorRT versions).
    Returns the metadata written into the file (``rcnn_det`` key of its ``metadata_props``):
    dict(inputs, outputs, mask_paste, dataset_meta, batch_size).
    """
    import onnx  # the `deploy` extra

    if opset < 16:
        raise ValueError(f'export_onnx: opset must be >= 16 (RoiAlign with half-pixel '
                         f'coordinates), got {opset}')
    detector = detector.eval()
    height, width = input_shape
    images = torch.zeros(batch_size, 3, height, width)
    torch.manual_seed(0)
    images.normal_()
    img_shapes = torch.tensor([[height, width]] * batch_size)
    scale_factors = torch.ones(batch_size, 2)
    # eval() on the wrapper too: the exporter puts the module it is given back into that
    # module's mode afterwards, and a fresh module is in training mode
    wrapper = ExportableDetector(detector).eval()
    with torch.no_grad():
        wrapper(images, img_shapes, scale_factors)   # which outputs there are
    mask_paste = wrapper.mask_paste
    outputs = OUTPUT_NAMES + ((MASK_OUTPUT,) if mask_paste is not None else ())
    dynamic_axes = {name: {0: 'num_detections'} for name in outputs}
    if dynamic:
        dynamic_axes['images'] = {2: 'height', 3: 'width'}
    with torch.no_grad(), deform_attn_sampling(deform_attn), warnings.catch_warnings():
        # The tracer warns at every Python value it records as a constant; the graph's tests
        # (same predictions as PyTorch at other input sizes) are what tell.
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', message='.*is deprecated.*')
        # the choice of this exporter is deliberate (module docstring)
        warnings.filterwarnings('ignore', message='You are using the legacy TorchScript-based')
        warnings.filterwarnings('ignore', message='The feature will be removed')
        # our indices are never negative, the case this warns about
        warnings.filterwarnings('ignore', message='Exporting aten::index operator')
        torch.onnx.export(wrapper, (images, img_shapes, scale_factors),
                          str(file), dynamo=False, opset_version=opset,
                          input_names=list(INPUT_NAMES), output_names=list(outputs),
                          dynamic_axes=dynamic_axes)
    metadata = dict(inputs=list(INPUT_NAMES), outputs=list(outputs), batch_size=batch_size,
                    deform_attn=deform_attn,
                    mask_paste=None if mask_paste is None else vars(mask_paste),
                    dataset_meta=_jsonable(dataset_meta or {}))
    model = onnx.load(str(file))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(model, str(file))
    return metadata


def _jsonable(meta: dict) -> dict:
    """``classes`` and ``palette`` as JSON lists."""
    return {key: [list(v) if isinstance(v, (tuple, list)) else v for v in value]
            if isinstance(value, (tuple, list)) else value
            for key, value in meta.items() if key in ('classes', 'palette')}


def detections_to_results(outputs: dict, num_images: int) -> list[InstanceData]:
    """The graph's flat outputs (name -> tensor) -> per image InstanceData(bboxes, scores,
    labels[, mask_probs]) in the original image's frame."""
    batch_ids = outputs['batch_ids']
    results = []
    for i in range(num_images):
        mine = batch_ids == i
        fields = dict(bboxes=outputs['boxes'][mine], scores=outputs['scores'][mine],
                      labels=outputs['labels'][mine])
        if MASK_OUTPUT in outputs:
            fields['mask_probs'] = outputs[MASK_OUTPUT][mine]
        results.append(InstanceData(**fields))
    return results
