"""tools/infer.py: a folder, a glob and a single file give drawings and a json whose numbers are
inference_detector's; inputs that name no image, or an unreadable one, fail saying which."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys

import mmcv
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from conftest import DEMO_CONFIG, MASK_DEMO_CONFIG, PYTHON, REPO_ROOT, run_tool
from rcnn_det.apis import inference_detector, init_detector

# 128 px inputs instead of 224 (index 1 of the demo test pipelines is their Resize), and at
# most 10 predictions per image: drawing 100 labelled boxes would cost more than the model.
SMALL_INPUT = {'test_dataloader.dataset.pipeline.1.scale': (128, 128),
               'model.test_cfg.rcnn.max_per_img': 10}
SMALL_INPUT_ARGS = ['--cfg-options', 'test_dataloader.dataset.pipeline.1.scale=(128,128)',
                    'model.test_cfg.rcnn.max_per_img=10']
CLASSES = ('disc', 'box', 'wedge', 'spark')
SCORE_THR = 0.2


def load_infer_tool():
    spec = importlib.util.spec_from_file_location('infer_tool', REPO_ROOT / 'tools' / 'infer.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


infer_tool = load_infer_tool()


def run_in_process(monkeypatch, *args: str) -> None:
    """tools/infer.py's main() with these command-line arguments, in this process."""
    monkeypatch.setattr(sys, 'argv', ['tools/infer.py', *map(str, args)])
    infer_tool.main()


def save_checkpoint(path, config):
    torch.manual_seed(0)
    model = init_detector(config, cfg_options=SMALL_INPUT)
    torch.save(dict(state_dict=model.state_dict(), meta=dict(dataset_meta=dict(classes=CLASSES))),
               path)
    return path


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Run on one thread, as run_tool runs the tool (OMP_NUM_THREADS=1): CPU kernels split their
    sums by thread, so the in-process reference would otherwise differ in the last bits. (Small
    inputs run no slower on one thread, and not at all slower on a busy machine.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp('ckpts')
    return dict(faster=save_checkpoint(root / 'faster.pth', DEMO_CONFIG),
                mask=save_checkpoint(root / 'mask.pth', MASK_DEMO_CONFIG))


@pytest.fixture(scope='module')
def image_dir(tmp_path_factory, tiny_shapes_root):
    """The 4 val images (000000.png ... 000003.png), a text file and sub/000001.png."""
    folder = tmp_path_factory.mktemp('images')
    for path in sorted((tiny_shapes_root / 'val').glob('*.png')):
        shutil.copy(path, folder / path.name)
    (folder / 'notes.txt').write_text('not an image')
    (folder / 'sub').mkdir()
    shutil.copy(folder / '000002.png', folder / 'sub' / '000001.png')
    return folder


def expected_instances(model, paths: list[str]) -> list[list[dict]]:
    """inference_detector's predictions (score > SCORE_THR) as plain numbers, one list per image."""
    records = []
    for sample in inference_detector(model, paths):
        pred = sample.pred_instances
        pred = pred[pred.scores > SCORE_THR]
        records.append([dict(bbox=b, score=s, label=lb, class_name=CLASSES[lb])
                        for b, s, lb in zip(pred.bboxes.tolist(), pred.scores.tolist(),
                                            pred.labels.tolist())])
    return records


def test_folder(tmp_path, checkpoints, image_dir):
    out = tmp_path / 'out'
    proc = run_tool([PYTHON, str(REPO_ROOT / 'tools/infer.py'), str(DEMO_CONFIG),
                     str(checkpoints['faster']), str(image_dir), '--out-dir', str(out),
                     '--score-thr', str(SCORE_THR), *SMALL_INPUT_ARGS], cwd=tmp_path)
    assert '4/4' in proc.stdout  # the progress bar reached the last image
    files = [str(image_dir / f'{i:06d}.png') for i in range(4)]  # sorted, no txt, no sub-folder
    assert sorted(p.name for p in (out / 'vis').iterdir()) == [f'{i:06d}.png' for i in range(4)]
    drawn = mmcv.imread(out / 'vis' / '000001.png')
    assert drawn.shape == mmcv.imread(files[1]).shape  # the original image, painted
    records = json.loads((out / 'predictions.json').read_text())
    assert [r['file_name'] for r in records] == files
    model = init_detector(DEMO_CONFIG, checkpoints['faster'], cfg_options=SMALL_INPUT)
    expected = expected_instances(model, files)
    assert sum(len(e) for e in expected) > 0, 'nothing above the threshold: the test is void'
    for record, instances, path in zip(records, expected, files):
        assert (record['height'], record['width']) == mmcv.imread(path).shape[:2]
        assert record['instances'] == instances  # the same floats, labels and class names


def test_glob_and_single_file(tmp_path, monkeypatch, checkpoints, image_dir):
    # A glob over two folders; the drawings keep the folders apart.
    out = tmp_path / 'glob'
    pattern = f'{image_dir}/**/00000[01].png'
    run_in_process(monkeypatch, DEMO_CONFIG, checkpoints['faster'], pattern, '--out-dir', out,
                   '--score-thr', SCORE_THR, '--batch-size', 1, *SMALL_INPUT_ARGS)
    assert sorted(str(p.relative_to(out / 'vis')) for p in (out / 'vis').rglob('*.png')) == [
        '000000.png', '000001.png', 'sub/000001.png']
    records = json.loads((out / 'predictions.json').read_text())
    assert [r['file_name'] for r in records] == [
        str(image_dir / '000000.png'), str(image_dir / '000001.png'),
        str(image_dir / 'sub' / '000001.png')]

    # One file through Mask R-CNN: the masks come back as COCO RLE of the original image.
    out = tmp_path / 'single'
    path = str(image_dir / 'sub' / '000001.png')
    run_in_process(monkeypatch, MASK_DEMO_CONFIG, checkpoints['mask'], path, '--out-dir', out,
                   '--score-thr', SCORE_THR, *SMALL_INPUT_ARGS)
    assert [p.name for p in (out / 'vis').iterdir()] == ['000001.png']
    [record] = json.loads((out / 'predictions.json').read_text())
    assert record['file_name'] == path
    model = init_detector(MASK_DEMO_CONFIG, checkpoints['mask'], cfg_options=SMALL_INPUT)
    pred = inference_detector(model, path).pred_instances
    pred = pred[pred.scores > SCORE_THR]
    assert len(pred) > 0 and len(record['instances']) == len(pred)
    assert [i['bbox'] for i in record['instances']] == pred.bboxes.tolist()
    masks = np.stack([mask_util.decode(i['mask']) for i in record['instances']])
    assert np.array_equal(masks, pred.masks.numpy())


def test_inputs_that_name_no_image(tmp_path, monkeypatch, checkpoints, image_dir):
    args = [DEMO_CONFIG, checkpoints['faster']]
    pattern = f'{image_dir}/*.jpeg'
    with pytest.raises(SystemExit, match=f"no image file .* matches the pattern "
                                         f"'{re.escape(pattern)}'"):
        run_in_process(monkeypatch, *args, pattern)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SystemExit, match='no image files .* in folder .*empty'):
        run_in_process(monkeypatch, *args, tmp_path / 'empty')
    with pytest.raises(SystemExit, match='input not found: .*nowhere is not an image file'):
        run_in_process(monkeypatch, *args, tmp_path / 'nowhere')
    with pytest.raises(SystemExit, match='checkpoint not found: .*none.pth'):
        run_in_process(monkeypatch, DEMO_CONFIG, tmp_path / 'none.pth', image_dir)


def test_a_checkpoint_of_another_model_is_refused(tmp_path, monkeypatch, checkpoints,
                                                  image_dir):
    """Not predictions of a half-loaded model: the file and what differs, and no output."""
    ckpt = checkpoints['faster']
    with pytest.raises(SystemExit) as error:
        run_in_process(monkeypatch, DEMO_CONFIG, ckpt, image_dir, '--out-dir', tmp_path / 'out',
                       '--cfg-options', 'model.roi_head.bbox_head.num_classes=3')
    assert str(error.value).startswith(f'infer.py: error: checkpoint {ckpt} does not fit the '
                                       'model (FasterRCNN)')
    assert 'roi_head.bbox_head.fc_cls.weight: checkpoint (5, 256) vs model (4, 256)' in \
        str(error.value)
    assert not (tmp_path / 'out').exists()


def test_unreadable_image_is_named(tmp_path, monkeypatch, checkpoints, image_dir):
    folder = tmp_path / 'images'
    folder.mkdir()
    shutil.copy(image_dir / '000000.png', folder / 'a.png')
    (folder / 'b.jpg').write_bytes(b'these bytes are no JPEG')
    with pytest.raises(SystemExit, match=r'cannot decode image file .*b\.jpg'):
        run_in_process(monkeypatch, DEMO_CONFIG, checkpoints['faster'], folder, '--out-dir',
                       tmp_path / 'out', *SMALL_INPUT_ARGS)


def test_vis_file_names_do_not_collide():
    names = infer_tool.vis_file_names(['d/a.jpg', 'd/a.png', 'd/b.png', 'd/sub/c.jpg'])
    assert names == ['a.jpg.png', 'a.png.png', 'b.png', 'sub/c.png']
