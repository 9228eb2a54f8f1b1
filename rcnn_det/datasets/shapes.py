"""The embedded demo data: filled shapes on textured backgrounds, written as a COCO dataset.

``generate_shapes_dataset(root)`` writes
    root/train/000000.png ...   root/val/000000.png ...
    root/annotations/instances_train.json   root/annotations/instances_val.json
    root/shapes_meta.json       (the generation arguments: same meta = same bytes)
Four classes, category ids 1..4: circle (a 48-gon), square (axis-aligned, sometimes a mild
rectangle), triangle and star (both rotated). 1..max_objects per image, never overlapping (their
boxes keep MARGIN px apart and from the border), vivid colours chosen to contrast with the local
background. Each shape is painted from its own polygon as pycocotools rasterises it, which is
what ``LoadAnnotations`` and COCOeval use, so the annotation's mask, bbox and area equal the
painted pixels exactly (cv2.fillPoly also fills the right/bottom boundary pixels, one more
column and row than pycocotools).
"""
from __future__ import annotations

import colorsys
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
from mmengine.logging import print_log
from pycocotools import mask as mask_utils

from rcnn_det.registry import DATASETS

from .coco import CocoDataset

SHAPE_CLASSES = ('circle', 'square', 'triangle', 'star')
GENERATOR_VERSION = 1  # bump when the drawing changes, so that old copies are regenerated
META_FILE = 'shapes_meta.json'
MARGIN = 3             # px kept free between two objects' boxes and to the image border
CIRCLE_VERTICES = 48
MIN_CONTRAST = 100.0   # RGB distance wanted between a shape and the mean background under it
PLACEMENT_TRIES = 50   # rejection-sampling attempts per object before it is left out
SPLITS = ('train', 'val')


def shape_polygon(rng: np.random.Generator, cls: str, size: float) -> np.ndarray:
    """(V, 2) xy vertices of one shape centred on the origin; all fit in a size x size box."""
    radius = size / 2
    if cls == 'circle':
        angles = np.arange(CIRCLE_VERTICES) * (2 * np.pi / CIRCLE_VERTICES)
        return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if cls == 'square':
        # Half are exact squares, half mild rectangles (w / h in 0.6..1.6), longer side = size.
        ratio = 1.0 if rng.random() < 0.5 else rng.uniform(0.6, 1.6)
        half_w, half_h = (radius, radius / ratio) if ratio >= 1 else (radius * ratio, radius)
        return np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h],
                         [-half_w, half_h]])
    if cls == 'triangle':
        angles = rng.uniform(0, 2 * np.pi) + np.arange(3) * (2 * np.pi / 3)
        return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if cls == 'star':
        angles = rng.uniform(0, 2 * np.pi) + np.arange(10) * (np.pi / 5)
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.38, 0.5))
        return radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    raise ValueError(f'shape_polygon: unknown shape {cls!r}')


def textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8: a smooth random colour field, fine noise and a few faint thin lines."""
    grid_h, grid_w = rng.integers(2, 6, size=2)
    coarse = rng.uniform(30, 225, size=(grid_h, grid_w, 3)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    field += rng.uniform(0, 4) * rng.standard_normal((height, width, 3), dtype=np.float32)
    img = np.ascontiguousarray(np.clip(field, 0, 255).astype(np.uint8))
    for _ in range(rng.integers(0, 4)):
        # Edge to edge, 1 px, within +-40 of the local colour: texture, not an object.
        x1, x2 = rng.integers(0, width, size=2)
        y1, y2 = rng.integers(0, height, size=2)
        start, end = ((int(x1), 0), (int(x2), height - 1)) if rng.random() < 0.5 else \
            ((0, int(y1)), (width - 1, int(y2)))
        shade = np.clip(img[start[1], start[0]].astype(np.int64) + rng.integers(-40, 41), 0, 255)
        cv2.line(img, start, end, tuple(int(c) for c in shade), 1, lineType=cv2.LINE_8)
    return img


def contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A vivid RGB colour (3,) uint8 far from the mean of ``background`` (..., 3) RGB."""
    hsv = np.stack([rng.random(16), rng.uniform(0.7, 1.0, 16), rng.uniform(0.7, 1.0, 16)], 1)
    candidates = np.array([colorsys.hsv_to_rgb(*c) for c in hsv]) * 255       # (16, 3)
    dist = np.linalg.norm(candidates - background.reshape(-1, 3).mean(0), axis=1)
    ok = np.flatnonzero(dist >= MIN_CONTRAST)
    return np.round(candidates[ok[0] if ok.size else dist.argmax()]).astype(np.uint8)


def place_polygon(rng: np.random.Generator, poly: np.ndarray, height: int, width: int,
                  taken: list[np.ndarray]) -> np.ndarray | None:
    """Translate ``poly`` (V, 2) to a random spot inside the image whose box, grown by MARGIN,
    meets no box in ``taken`` ((4,) x1y1x2y2 each); None if PLACEMENT_TRIES all fail."""
    lo, hi = poly.min(0), poly.max(0)
    for _ in range(PLACEMENT_TRIES):
        shift = rng.uniform([MARGIN - lo[0], MARGIN - lo[1]],
                            [width - MARGIN - hi[0], height - MARGIN - hi[1]])
        box = np.concatenate([lo + shift - MARGIN, hi + shift + MARGIN])
        others = np.array(taken).reshape(-1, 4)                                # (T, 4)
        meets = ((box[0] < others[:, 2]) & (others[:, 0] < box[2])
                 & (box[1] < others[:, 3]) & (others[:, 1] < box[3]))
        if not meets.any():
            taken.append(box)
            return np.round(poly + shift, 2)
    return None


def draw_image(rng: np.random.Generator, img_size: tuple[int, int],
               obj_size: tuple[int, int], max_objects: int) -> tuple[np.ndarray, list[dict]]:
    """One image: (H, W, 3) BGR uint8 and its objects as dict(category_id, polygon, rle)."""
    width, height = (int(v) for v in rng.integers(img_size[0], img_size[1] + 1, size=2))
    img = textured_background(rng, height, width)
    objects, taken = [], []
    for _ in range(rng.integers(1, max_objects + 1)):
        label = int(rng.integers(len(SHAPE_CLASSES)))
        poly = shape_polygon(rng, SHAPE_CLASSES[label], rng.uniform(*obj_size))
        poly = place_polygon(rng, poly, height, width, taken)
        if poly is None:
            continue
        flat = [float(v) for v in poly.reshape(-1)]
        rle = mask_utils.merge(mask_utils.frPyObjects([flat], height, width))
        painted = mask_utils.decode(rle).astype(bool)
        img[painted] = contrasting_colour(rng, img[painted][:, ::-1])[::-1]  # BGR <-> RGB
        objects.append(dict(category_id=label + 1, polygon=flat, rle=rle))
    return img, objects


def write_split(root: Path, split: str, num_images: int, seed: int, img_size: tuple[int, int],
                obj_size: tuple[int, int], max_objects: int) -> None:
    """Draw ``num_images`` images into root/split/ and write annotations/instances_split.json."""
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for index in range(num_images):
        # One generator per image, keyed by (seed, split, index): an image does not depend on
        # how many images come before it, so num_train never changes the val split.
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        img, objects = draw_image(rng, img_size, obj_size, max_objects)
        file_name = f'{index:06d}.png'
        cv2.imwrite(str(root / split / file_name), img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        images.append(dict(id=index + 1, file_name=file_name, height=img.shape[0],
                           width=img.shape[1]))
        for obj in objects:
            # COCOeval treats annotation id 0 as "unmatched": ids start at 1.
            annotations.append(dict(
                id=len(annotations) + 1, image_id=index + 1, category_id=obj['category_id'],
                bbox=[float(v) for v in mask_utils.toBbox(obj['rle'])],
                area=float(mask_utils.area(obj['rle'])), segmentation=[obj['polygon']],
                iscrowd=0))
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(SHAPE_CLASSES)]
    coco = dict(info=dict(description='rcnn_det synthetic shapes', version=GENERATOR_VERSION),
                images=images, annotations=annotations, categories=categories)
    (root / 'annotations').mkdir(exist_ok=True)
    (root / 'annotations' / f'instances_{split}.json').write_text(
        json.dumps(coco, separators=(',', ':')))


def shapes_meta(num_train: int, num_val: int, seed: int, img_size: tuple[int, int],
                obj_size: tuple[int, int], max_objects: int) -> dict:
    """The generation arguments as stored in shapes_meta.json, after checking them."""
    img_size, obj_size = tuple(int(v) for v in img_size), tuple(int(v) for v in obj_size)
    if len(img_size) != 2 or len(obj_size) != 2 or img_size[0] > img_size[1] \
            or not 4 <= obj_size[0] <= obj_size[1]:
        raise ValueError(f'generate_shapes_dataset: img_size and obj_size are (min, max) pairs '
                         f'with obj_size >= 4, got img_size={img_size}, obj_size={obj_size}')
    if obj_size[1] + 2 * MARGIN > img_size[0]:
        raise ValueError(f'generate_shapes_dataset: obj_size max {obj_size[1]} + 2 * {MARGIN} '
                         f'px margin must fit the smallest image side {img_size[0]}')
    if max_objects < 1 or num_train < 0 or num_val < 0:
        raise ValueError('generate_shapes_dataset: max_objects must be >= 1 and image counts '
                         f'>= 0, got {max_objects}, {num_train}, {num_val}')
    return dict(generator_version=GENERATOR_VERSION, num_train=int(num_train),
                num_val=int(num_val), seed=int(seed), img_size=list(img_size),
                obj_size=list(obj_size), max_objects=int(max_objects))


def read_meta(root: Path) -> dict | None:
    try:
        return json.loads((root / META_FILE).read_text())
    except (OSError, ValueError):
        return None


def publish(tmp: Path, root: Path, meta: dict) -> None:
    """Move the finished ``tmp`` to ``root`` atomically. If another process got there first
    with the same meta, keep its copy; replace a copy with other meta; never touch a folder
    that is not a shapes dataset."""
    for _ in range(3):
        try:
            os.rename(tmp, root)  # atomic; fails if root exists and is not empty
            return
        except OSError:
            existing = read_meta(root)
            if existing == meta:
                return
            if existing is None and root.exists() and any(root.iterdir()):
                raise FileExistsError(f'{root} exists and is not a shapes dataset (no '
                                      f'{META_FILE}); refusing to replace it') from None
            old = root.with_name(f'.{root.name}.old-{uuid.uuid4().hex}')
            try:
                os.rename(root, old)
            except FileNotFoundError:
                continue  # another process moved it meanwhile: try again
            shutil.rmtree(old, ignore_errors=True)
    raise RuntimeError(f'could not publish the shapes dataset at {root}: other processes keep '
                       'writing it with different arguments')


def shapes_dataset_ready(root: str | os.PathLike, **shapes_cfg) -> bool:
    """True when ``root`` holds a complete dataset generated with these arguments."""
    kwargs = {**SHAPES_DEFAULTS, **shapes_cfg}
    return read_meta(Path(root)) == shapes_meta(**kwargs)


def generate_shapes_dataset(root: str | os.PathLike, num_train: int = 1000, num_val: int = 120,
                            seed: int = 0, img_size: tuple[int, int] = (160, 320),
                            obj_size: tuple[int, int] = (24, 96),
                            max_objects: int = 4) -> Path:
    """Write the shapes dataset to ``root`` (see the module docstring) unless it is there.

    Deterministic: the same arguments give the same bytes. Safe when several processes start
    at once: each writes to a temporary folder beside ``root`` and renames it into place; an
    existing ``root`` with the same meta is used as is, one with other meta is replaced.
    ``img_size`` and ``obj_size`` are (min, max) in pixels; width and height are drawn apart.
    """
    root = Path(root)
    meta = shapes_meta(num_train, num_val, seed, img_size, obj_size, max_objects)
    if read_meta(root) == meta:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{root.name}.tmp-', dir=root.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the published dataset is not
        for split, num in zip(SPLITS, (num_train, num_val)):
            write_split(tmp, split, num, seed, meta['img_size'], meta['obj_size'], max_objects)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))  # last: marks it complete
        publish(tmp, root, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


SHAPES_DEFAULTS = {name: p.default for name, p in
                   inspect.signature(generate_shapes_dataset).parameters.items() if name != 'root'}


@DATASETS.register_module()
class ShapesDataset(CocoDataset):
    """``CocoDataset`` over the embedded shapes data, generated under ``data_root`` on first use.

    The only concrete subclass of ``CocoDataset``: it adds no parsing, only makes sure that
    ``data_root`` holds the data that ``generate_shapes_dataset(data_root, **shapes_cfg)``
    writes (an info log line says where and how long generation took) before loading it.
    Defaults read the train split; for val use ``ann_file='annotations/instances_val.json'``,
    ``data_prefix=dict(img='val/')``.
    """

    METAINFO = dict(classes=SHAPE_CLASSES)

    def __init__(self, *, shapes_cfg: dict | None = None, data_root: str = 'data/shapes/',
                 ann_file: str = 'annotations/instances_train.json',
                 data_prefix: dict = dict(img='train/'), **coco_dataset_args) -> None:
        unknown = set(shapes_cfg or {}) - set(SHAPES_DEFAULTS)
        if unknown:
            raise ValueError(f'ShapesDataset: shapes_cfg has unknown key(s) {sorted(unknown)}; '
                             f'expected some of {sorted(SHAPES_DEFAULTS)}')
        if not data_root:
            raise ValueError('ShapesDataset: data_root must name the folder to generate into')
        self.shapes_cfg = dict(shapes_cfg or {})
        super().__init__(data_root=data_root, ann_file=ann_file, data_prefix=data_prefix,
                         **coco_dataset_args)

    def load_data_list(self) -> list[dict]:
        if not shapes_dataset_ready(self.data_root, **self.shapes_cfg):
            start = time.perf_counter()
            generate_shapes_dataset(self.data_root, **self.shapes_cfg)
            print_log(f'ShapesDataset: generated the shapes dataset in '
                      f'{os.path.abspath(self.data_root)} in {time.perf_counter() - start:.1f} s',
                      logger='current', level=logging.INFO)
        return super().load_data_list()
