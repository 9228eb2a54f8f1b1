"""tools/analysis_tools/browse_dataset.py draws the training pipeline's output with its ground
truth, one PNG per sample."""
from __future__ import annotations

import matplotlib.image
import numpy as np
from mmengine.config import Config
from mmengine.registry import DefaultScope

from conftest import MASK_DEMO_CONFIG, PYTHON, REPO_ROOT, run_tool, write_tiny_demo_config
from rcnn_det.registry import DATASETS


def test_draws_the_pipeline_output_with_its_ground_truth(tmp_path, tiny_shapes_root):
    config = write_tiny_demo_config(tmp_path / 'tiny_mask.py', tiny_shapes_root,
                                    base=MASK_DEMO_CONFIG)
    out = run_tool([PYTHON, str(REPO_ROOT / 'tools/analysis_tools/browse_dataset.py'),
                    str(config), '--output-dir', 'browse', '--show-number', '3',
                    '--cfg-options', 'train_dataloader.dataset.pipeline.3.prob=0.0'],
                   cwd=tmp_path).stdout
    assert '3 sample(s) of 8 drawn into browse' in out
    files = sorted((tmp_path / 'browse').glob('*.png'))
    assert [f.name for f in files] == ['000000_0.png', '000001_1.png', '000002_2.png']
    cfg = Config.fromfile(str(config))
    cfg.train_dataloader.dataset.pipeline[3].prob = 0.0    # no flip: the same pixels
    with DefaultScope.overwrite_default_scope('rcnn_det'):
        dataset = DATASETS.build(cfg.train_dataloader.dataset)
    for index, file in enumerate(files):
        drawn = (matplotlib.image.imread(str(file))[..., :3] * 255).round()
        item = dataset[index]
        image = item['inputs'].permute(1, 2, 0).numpy()[..., ::-1].astype(np.float64)  # RGB
        assert drawn.shape == image.shape                 # the network's input, not the file
        changed = np.abs(drawn - image).max(-1) > 30      # boxes, labels and masks drawn on it
        boxes = item['data_samples'].gt_instances.bboxes
        assert len(boxes) > 0 and changed.mean() > 0.01
        x1, y1, x2, y2 = boxes[0].round().int().tolist()
        assert changed[y1:y2 + 1, x1:x2 + 1].mean() > changed.mean()   # most inside the objects
