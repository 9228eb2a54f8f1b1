"""ONNX export: the graph, run by onnxruntime, predicts what the PyTorch model predicts, at input
sizes other than the traced one, for a batch of two, and when nothing is detected."""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch

from conftest import (ATSS_DEMO_CONFIG, CO_DETR_DEMO_CONFIG, CO_DINO_DEMO_CONFIG, DEMO_CONFIG,
                      DETR_DEMO_CONFIG, DINO_DEMO_CONFIG, MASK_DEMO_CONFIG)
from rcnn_det.apis import inference_detector, init_detector
from rcnn_det.deployment import ExportableDetector, export_onnx
from rcnn_det.deployment.onnx_runtime import OnnxDetector
from rcnn_det.models.post_processing import batched_soft_nms

FAMILIES = dict(faster_rcnn=DEMO_CONFIG, mask_rcnn=MASK_DEMO_CONFIG, atss=ATSS_DEMO_CONFIG,
                deformable_detr=DETR_DEMO_CONFIG, co_deformable_detr=CO_DETR_DEMO_CONFIG,
                dino=DINO_DEMO_CONFIG, co_dino=CO_DINO_DEMO_CONFIG)
# score thresholds no detection of a randomly initialised model reaches
NOTHING_DETECTED = dict(faster_rcnn={'model.test_cfg.rcnn.score_thr': 0.999},
                        mask_rcnn={'model.test_cfg.rcnn.score_thr': 0.999},
                        atss={'model.test_cfg.score_thr': 0.999},
                        deformable_detr={'model.test_cfg.score_thr': 0.999},
                        co_deformable_detr={'model.test_cfg.0.score_thr': 0.999},
                        dino={'model.test_cfg.score_thr': 0.999},
                        co_dino={'model.test_cfg.0.score_thr': 0.999})
TRACED = (224, 256)


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(config, cfg_options: dict | None = None):
    torch.manual_seed(0)
    return init_detector(config, cfg_options=cfg_options)


def graph_inputs(batch: int, size: tuple[int, int], img_shapes: list[tuple[int, int]],
                 seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A normalised, padded batch, each image's (h, w) inside it, and resize factors."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, *size, generator=generator)
    scale_factors = torch.tensor([[0.8, 0.75], [1.25, 1.5]])[:batch]
    return images, torch.tensor(img_shapes), scale_factors


def both(model, file, inputs) -> tuple[dict, dict]:
    """The graph's outputs from PyTorch and from onnxruntime, by name."""
    session = onnxruntime.InferenceSession(str(file), providers=['CPUExecutionProvider'])
    names = [o.name for o in session.get_outputs()]
    with torch.no_grad():
        eager = ExportableDetector(model).eval()(*inputs)
    feed = dict(zip(['images', 'img_shapes', 'scale_factors'], (t.numpy() for t in inputs)))
    return ({n: t.numpy() for n, t in zip(names, eager)},
            dict(zip(names, session.run(None, feed))))


def assert_same_detections(eager: dict, ort: dict) -> None:
    assert eager.keys() == ort.keys()
    assert len(ort['scores']) == len(eager['scores'])
    np.testing.assert_array_equal(ort['labels'], eager['labels'])
    np.testing.assert_array_equal(ort['batch_ids'], eager['batch_ids'])
    np.testing.assert_allclose(ort['boxes'], eager['boxes'], rtol=0, atol=1e-2)
    np.testing.assert_allclose(ort['scores'], eager['scores'], rtol=0, atol=1e-4)
    if 'masks' in eager:
        a, b = eager['masks'] >= 0.5, ort['masks'] >= 0.5                # (N, S, S)
        union = (a | b).sum((1, 2))
        iou = np.where(union > 0, (a & b).sum((1, 2)) / np.maximum(union, 1), 1.0)
        assert (iou >= 0.99).all()


@pytest.mark.parametrize('family', list(FAMILIES))
def test_exported_graph_predicts_what_pytorch_predicts(family, tmp_path):
    """At the traced size and another one, for a batch of two images of different sizes (and
    so padding), boxes in the original images."""
    model = build(FAMILIES[family])
    file = tmp_path / f'{family}.onnx'
    meta = export_onnx(model, file, TRACED, batch_size=2, dynamic=True)
    assert meta['outputs'][-1] == ('masks' if family == 'mask_rcnn' else 'batch_ids')
    for size, img_shapes in ((TRACED, [(224, 250), (200, 256)]),
                             ((160, 288), [(150, 288), (160, 200)])):
        eager, ort = both(model, file, graph_inputs(2, size, img_shapes))
        assert set(eager['batch_ids']) == {0, 1}
        assert_same_detections(eager, ort)
        for image, ((height, width), (sx, sy)) in enumerate(zip(img_shapes, [(0.8, 0.75),
                                                                             (1.25, 1.5)])):
            boxes = ort['boxes'][ort['batch_ids'] == image]
            assert (boxes[:, 2] <= width / sx + 1e-3).all()
            assert (boxes[:, 3] <= height / sy + 1e-3).all()


@pytest.mark.parametrize('family', list(NOTHING_DETECTED))
def test_an_image_with_no_detections(family, tmp_path):
    model = build(FAMILIES[family], NOTHING_DETECTED[family])
    file = tmp_path / f'{family}.onnx'
    export_onnx(model, file, TRACED, dynamic=True)
    eager, ort = both(model, file, graph_inputs(1, (192, 224), [(192, 224)]))
    assert len(eager['scores']) == 0
    assert_same_detections(eager, ort)
    assert ort['boxes'].shape == (0, 4)


def test_deformable_attention_can_export_without_grid_sample(tmp_path):
    """``deform_attn='gather'``: the bilinear sampling as Gather ops (for TensorRT versions
    whose GridSample is wrong); same predictions."""
    import onnx
    model = build(DINO_DEMO_CONFIG)
    file = tmp_path / 'dino_gather.onnx'
    export_onnx(model, file, TRACED, dynamic=True, deform_attn='gather')
    operators = {node.op_type for node in onnx.load(str(file)).graph.node}
    assert 'GridSample' not in operators and 'GatherElements' in operators
    eager, ort = both(model, file, graph_inputs(1, (160, 288), [(150, 288)]))
    assert_same_detections(eager, ort)


class SoftNMS(torch.nn.Module):
    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method

    def forward(self, boxes, scores, groups, image_ids):
        return batched_soft_nms(boxes, scores, groups, image_ids, iou_threshold=0.3, sigma=0.5,
                                min_score=0.2, method=self.method)


def crowded(num: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Heavily overlapping boxes of 3 images and 2 groups: many decays, many drops."""
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=generator) * 30
    boxes = torch.cat([xy, xy + 20 + torch.rand(num, 2, generator=generator) * 10], 1)
    return (boxes, torch.rand(num, generator=generator),
            torch.randint(0, 2, (num,), generator=generator),
            torch.randint(0, 3, (num,), generator=generator))


@pytest.mark.parametrize('method', ['linear', 'gaussian', 'naive'])
def test_soft_nms_rounds_become_an_onnx_loop(method, tmp_path):
    """Its rounds run as often as the data needs: other candidate counts than the traced one."""
    file = tmp_path / 'soft_nms.onnx'
    with torch.no_grad():
        torch.onnx.export(SoftNMS(method), crowded(40, 0), str(file), dynamo=False,
                          opset_version=17, input_names=['b', 's', 'g', 'i'],
                          dynamic_axes={name: {0: 'n'} for name in 'bsgi'})
    session = onnxruntime.InferenceSession(str(file), providers=['CPUExecutionProvider'])
    for num, seed in ((40, 1), (90, 2), (7, 3)):
        inputs = crowded(num, seed)
        keep, kept_scores = batched_soft_nms(*inputs, iou_threshold=0.3, sigma=0.5,
                                             min_score=0.2, method=method)
        assert len(keep) < num   # some were dropped
        ort_keep, ort_scores = session.run(None, dict(zip('bsgi', (t.numpy() for t in inputs))))
        np.testing.assert_array_equal(ort_keep, keep.numpy())
        np.testing.assert_allclose(ort_scores, kept_scores.numpy(), rtol=0, atol=1e-6)


def test_init_detector_runs_an_onnx_file_like_its_checkpoint(tmp_path, tiny_shapes_root):
    """Same preprocessing, same predictions in the original image (Mask R-CNN: masks pasted
    into it); class names travel in the file."""
    model = build(MASK_DEMO_CONFIG)
    with torch.no_grad():   # mask logits far from 0: a random model's are all near p = 0.5
        model.roi_head.mask_head.conv_logits.weight.mul_(30)
    model.dataset_meta = dict(classes=('disc', 'box', 'wedge', 'spark'))
    file = tmp_path / 'mask.onnx'
    export_onnx(model, file, TRACED, dynamic=True, dataset_meta=model.dataset_meta)
    onnx_model = init_detector(MASK_DEMO_CONFIG, file)
    assert isinstance(onnx_model, OnnxDetector)
    assert onnx_model.dataset_meta['classes'] == ('disc', 'box', 'wedge', 'spark')
    images = sorted(str(p) for p in (tiny_shapes_root / 'val').glob('*.png'))[:3]
    expected = inference_detector(model, images, batch_size=1)
    found = inference_detector(onnx_model, images)
    for a, b in zip(expected, found):
        a, b = a.pred_instances, b.pred_instances
        assert len(a) == len(b) > 0 and b.masks.shape[-2:] == a.masks.shape[-2:]
        torch.testing.assert_close(b.bboxes, a.bboxes, rtol=0, atol=1e-2)
        torch.testing.assert_close(b.scores, a.scores, rtol=0, atol=1e-4)
        assert torch.equal(b.labels, a.labels)
        union = (a.masks | b.masks).sum((1, 2))
        iou = torch.where(union > 0, (a.masks & b.masks).sum((1, 2)) / union.clamp(min=1), 1.0)
        assert bool((iou >= 0.99).all())


def test_a_file_not_written_by_rcnn_det_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node('Identity', ['x'], ['y'])], 'g',
                              [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / 'other.onnx')
    with pytest.raises(ValueError, match='other.onnx: not an ONNX file written by rcnn_det'):
        init_detector(ATSS_DEMO_CONFIG, tmp_path / 'other.onnx')
