"""A tiny COCO dataset written into pytest's tmp_path, shared by the dataset and transform tests.

Categories are unsorted with gaps (ids 3, 1, 7) so that label order is really tested.
images: 1 a.png 40x30 (w x h): a dog polygon + a crowd cat (RLE)
        2 b.png 50x20: a bird (shorter side 20)
        3 c.png 60x60: nothing
        4 d.png 60x60: only a crowd cat
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

CATEGORIES = [dict(id=3, name='cat'), dict(id=1, name='dog'), dict(id=7, name='bird')]
IMAGES = [dict(id=1, file_name='a.png', width=40, height=30),
          dict(id=2, file_name='b.png', width=50, height=20),
          dict(id=3, file_name='c.png', width=60, height=60),
          dict(id=4, file_name='d.png', width=60, height=60)]


def crowd_rle(height: int, width: int, box: tuple[int, int, int, int]) -> dict:
    """Compressed RLE (str counts) of the x1, y1, x2, y2 pixel rectangle."""
    bitmap = np.zeros((height, width), np.uint8, order='F')
    x1, y1, x2, y2 = box
    bitmap[y1:y2, x1:x2] = 1
    rle = mask_utils.encode(bitmap)
    return dict(size=rle['size'], counts=rle['counts'].decode())


def tiny_coco() -> dict:
    annotations = [
        dict(id=1, image_id=1, category_id=1, bbox=[2, 3, 10, 5], area=50, iscrowd=0,
             segmentation=[[2, 3, 12, 3, 12, 8, 2, 8]]),
        dict(id=2, image_id=1, category_id=3, bbox=[20, 10, 8, 8], area=64, iscrowd=1,
             segmentation=crowd_rle(30, 40, (20, 10, 28, 18))),
        dict(id=3, image_id=2, category_id=7, bbox=[1, 1, 5, 5], area=25, iscrowd=0,
             segmentation=[[1, 1, 6, 1, 6, 6, 1, 6]]),
        dict(id=4, image_id=4, category_id=3, bbox=[0, 0, 10, 10], area=100, iscrowd=1,
             segmentation=crowd_rle(60, 60, (0, 0, 10, 10))),
    ]
    return dict(images=copy.deepcopy(IMAGES), annotations=annotations,
                categories=copy.deepcopy(CATEGORIES))


def write_coco(root: Path, coco: dict | str, with_images: bool = True) -> Path:
    """Write ``coco`` (a dict, or raw text) to root/ann.json and, optionally, noise images."""
    root.mkdir(parents=True, exist_ok=True)
    ann_file = root / 'ann.json'
    ann_file.write_text(coco if isinstance(coco, str) else json.dumps(coco))
    if with_images and isinstance(coco, dict):
        (root / 'imgs').mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        for img in coco.get('images', []):
            pixels = rng.integers(0, 256, (img['height'], img['width'], 3), dtype=np.uint8)
            cv2.imwrite(str(root / 'imgs' / img['file_name']), pixels)
    return ann_file


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """tmp_path/ann.json + tmp_path/imgs/*.png holding ``tiny_coco()``."""
    write_coco(tmp_path, tiny_coco())
    return tmp_path
