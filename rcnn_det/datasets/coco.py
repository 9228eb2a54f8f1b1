"""``CocoDataset``: a COCO-format json -> one data info per image (mmdetection 3.x semantics).

Each data info:
    img_id, img_path, height, width,
    instances: list of dict(bbox=[x1, y1, x2, y2] float px, bbox_label in [0, C),
                            ignore_flag=1 for iscrowd else 0, mask=the COCO segmentation as is)
where C = len(metainfo['classes']).
"""
from __future__ import annotations

import colorsys
import contextlib
import io
import json
import logging
import math
import os.path as osp
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from mmengine.fileio import get_local_path
from mmengine.logging import print_log
from mmengine.registry import DefaultScope
from pycocotools.coco import COCO

from rcnn_det.registry import DATASETS

from .base_det_dataset import BaseDetDataset

REQUIRED_TOP_KEYS = ('images', 'annotations', 'categories')
REQUIRED_IMAGE_KEYS = ('id', 'file_name', 'width', 'height')
REQUIRED_ANN_KEYS = ('id', 'image_id', 'category_id', 'bbox')
FILTER_CFG_KEYS = ('filter_empty_gt', 'min_size')
MAX_LISTED_SKIPS = 10  # skipped annotations named one by one in the warning; the rest are counted


def distinct_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """``num_classes`` deterministic, well separated RGB colours (golden-ratio hue steps)."""
    palette = []
    for i in range(num_classes):
        hue = (i * 0.618033988749895) % 1.0
        value = 0.95 if i % 2 == 0 else 0.75  # alternate brightness so neighbours differ twice
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
        palette.append((round(r * 255), round(g * 255), round(b * 255)))
    return palette


def read_coco_json(ann_file: str, backend_args: dict | None = None) -> dict:
    """Load ``ann_file`` and check that it is a COCO detection file; errors name the file."""
    try:
        with get_local_path(ann_file, backend_args=backend_args) as local_path:
            with open(local_path, encoding='utf-8') as f:
                data = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f'COCO annotation file not found: {ann_file}') from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f'{ann_file} is not a COCO annotation file: invalid JSON ({e})') from e
    if not isinstance(data, dict):
        raise ValueError(f'{ann_file} is not a COCO annotation file: the top level is a '
                         f'{type(data).__name__}, expected an object with keys {REQUIRED_TOP_KEYS}')
    missing = [k for k in REQUIRED_TOP_KEYS if k not in data]
    if missing:
        raise ValueError(f'{ann_file} is not a COCO annotation file: missing top-level key(s) '
                         f'{missing} (expected {list(REQUIRED_TOP_KEYS)})')
    for kind, required in (('images', REQUIRED_IMAGE_KEYS), ('annotations', REQUIRED_ANN_KEYS),
                           ('categories', ('id', 'name'))):
        if not isinstance(data[kind], list):
            raise ValueError(f"{ann_file}: '{kind}' must be a list, "
                             f'got {type(data[kind]).__name__}')
        for i, entry in enumerate(data[kind]):
            lacking = [k for k in required if not isinstance(entry, dict) or k not in entry]
            if lacking:
                name = entry.get('id', f'#{i}') if isinstance(entry, dict) else f'#{i}'
                raise ValueError(f"{ann_file}: {kind[:-1]} {name} (entry {i} of '{kind}') lacks "
                                 f'key(s) {lacking}')
    check_references(data, ann_file)
    return data


def check_references(data: dict, ann_file: str) -> None:
    """Unique ids, and every annotation points at an existing image and category."""
    for kind in REQUIRED_TOP_KEYS:
        dupes = [i for i, n in Counter(e['id'] for e in data[kind]).items() if n > 1]
        if dupes:
            raise ValueError(f"{ann_file}: duplicate {kind[:-1]} id(s) {sorted(dupes)[:10]}")
    img_ids = {img['id'] for img in data['images']}
    cat_ids = {cat['id'] for cat in data['categories']}
    for ann in data['annotations']:
        if ann['image_id'] not in img_ids:
            raise ValueError(f"{ann_file}: annotation {ann['id']} refers to image_id "
                             f"{ann['image_id']}, which is not in 'images'")
        if ann['category_id'] not in cat_ids:
            raise ValueError(f"{ann_file}: annotation {ann['id']} refers to category_id "
                             f"{ann['category_id']}, which is not in 'categories' "
                             f'(ids {sorted(cat_ids)})')
        bbox = ann['bbox']
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                and all(is_number(v) for v in bbox)):
            raise ValueError(f"{ann_file}: annotation {ann['id']} has bbox {bbox!r}, "
                             'expected [x, y, width, height] numbers')
        if 'area' in ann and not is_number(ann['area']):
            raise ValueError(f"{ann_file}: annotation {ann['id']} has area {ann['area']!r}, "
                             'expected a number')


def is_number(value: Any) -> bool:
    """An int or float (NaN and infinities included: those are skipped per box), not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def select_categories(categories: list[dict], classes: Sequence[str] | None,
                      ann_file: str) -> tuple[tuple[str, ...], list[int]]:
    """Class names and their category ids, label i <-> cat_ids[i].

    Without ``classes`` every category is used, sorted by id. With ``classes`` only those,
    matched by name, in the order of ``classes`` (mmdet orders labels by the json instead, which
    mislabels a config whose class order differs from the file's).
    """
    if classes is None:
        cats = sorted(categories, key=lambda c: c['id'])
        return tuple(c['name'] for c in cats), [c['id'] for c in cats]
    name_to_ids: dict[str, list[int]] = {}
    for cat in categories:
        name_to_ids.setdefault(cat['name'], []).append(cat['id'])
    unknown = [name for name in classes if name not in name_to_ids]
    if unknown:
        raise ValueError(f'metainfo classes {unknown} are not categories of {ann_file} '
                         f'(it has {sorted(name_to_ids)})')
    ambiguous = [name for name in classes if len(name_to_ids[name]) > 1]
    if ambiguous:
        raise ValueError(f'{ann_file}: category name(s) {ambiguous} appear under several ids')
    return tuple(classes), [name_to_ids[name][0] for name in classes]


def invalid_box_reason(ann: dict, img: dict) -> str | None:
    """Why an annotation cannot be a training box (mmdet drops these silently), or None.

    Comparisons are written so that NaN fails them (``nan < 1`` and ``nan <= 0`` are False).
    """
    x, y, w, h = ann['bbox']
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return f"bbox {ann['bbox']} has a non-finite coordinate (NaN or infinity)"
    area = ann.get('area', w * h)
    if not (w >= 1 and h >= 1):
        return f'bbox width/height {w}x{h} below 1 px'
    if not area > 0:  # NaN fails this too
        return f'area {area} <= 0' if area <= 0 else f'area {area} is not a number'
    inter_w = min(x + w, img['width']) - max(x, 0)
    inter_h = min(y + h, img['height']) - max(y, 0)
    if inter_w <= 0 or inter_h <= 0:
        return f"bbox {ann['bbox']} lies outside the {img['width']}x{img['height']} image"
    return None


@DATASETS.register_module()
class CocoDataset(BaseDetDataset):
    """A COCO-format detection / instance-segmentation dataset (mmdetection 3.x arguments).

    Args:
        ann_file: COCO json, relative to ``data_root`` unless absolute.
        metainfo: ``dict(classes=(...), palette=[...])``. Without ``classes`` the json's
            categories sorted by id are the classes (known after loading; with ``lazy_init``
            only after ``full_init``).
        data_prefix: ``dict(img='train2017/')``: image folder, relative to ``data_root``.
        filter_cfg: ``dict(filter_empty_gt=True, min_size=32)`` drops, in training only, images
            without any annotation of the classes and images whose shorter side is below
            ``min_size``. As in mmdet, any annotation counts, also a crowd region or one that
            cannot be a box (so an image may be kept with no training box). None (mmdet's
            default) keeps every image.
        backend_args: mmengine file backend arguments for reading ``ann_file``.
        Others: as mmengine's ``BaseDataset``.

    ``cat_ids[label]`` is the COCO category id of ``label``; ``cat2label`` the inverse;
    ``cat_img_map`` maps every category id of the json to the ids of the images that have an
    annotation of it (pycocotools' ``catToImgs``, one entry per annotation, as mmdet's).
    Annotations that cannot be a box (a NaN or infinite coordinate, width or height < 1 px,
    area <= 0, outside the image) are skipped with one aggregated warning that names each
    annotation id and its image. An empty dataset is a ValueError naming ``ann_file`` at
    ``full_init``: a file without images, or (training) every image removed by ``filter_cfg``.
    """

    METAINFO: dict = dict()

    def __init__(self, ann_file: str = '', metainfo: Mapping | None = None, data_root: str = '',
                 data_prefix: dict = dict(img=''), filter_cfg: dict | None = None,
                 indices: int | Sequence[int] | None = None, serialize_data: bool = True,
                 pipeline: Sequence[dict | Callable] = (), test_mode: bool = False,
                 lazy_init: bool = False, max_refetch: int = 1000,
                 backend_args: dict | None = None) -> None:
        if 'img' not in data_prefix or set(data_prefix) - {'img'}:
            raise ValueError(f"CocoDataset: data_prefix must be dict(img='<image folder>'), "
                             f'got {data_prefix}')
        unknown = set(filter_cfg or {}) - set(FILTER_CFG_KEYS)
        if unknown:
            raise ValueError(f'CocoDataset: filter_cfg has unknown key(s) {sorted(unknown)}; '
                             f'expected {list(FILTER_CFG_KEYS)}')
        self.backend_args = backend_args
        # mmengine builds the pipeline from its ROOT registry, which without a default scope
        # would silently pick mmcv's LoadAnnotations/Resize (they ignore masks). Runner sets the
        # scope from the config; a dataset built by hand gets ours.
        scope = None if DefaultScope.get_current_instance() is not None else 'rcnn_det'
        with DefaultScope.overwrite_default_scope(scope):
            super().__init__(ann_file=ann_file, metainfo=metainfo, data_root=data_root,
                             data_prefix=data_prefix, filter_cfg=filter_cfg, indices=indices,
                             serialize_data=serialize_data, pipeline=list(pipeline),
                             test_mode=test_mode, lazy_init=lazy_init, max_refetch=max_refetch)

    @classmethod
    def _load_metainfo(cls, metainfo: Mapping | None = None) -> dict:
        meta = super()._load_metainfo(metainfo)
        if 'classes' in meta:
            classes = meta['classes']
            if (isinstance(classes, str) or not all(isinstance(c, str) for c in classes)
                    or len(set(classes)) != len(classes)):
                raise ValueError(f'metainfo classes must be distinct names, got {classes!r}')
            meta['classes'] = tuple(classes)
            cls._check_or_make_palette(meta)
        return meta

    @staticmethod
    def _check_or_make_palette(meta: dict) -> None:
        num_classes = len(meta['classes'])
        if 'palette' not in meta:
            meta['palette'] = distinct_palette(num_classes)
        elif len(meta['palette']) != num_classes:
            raise ValueError(f"metainfo palette has {len(meta['palette'])} colours for "
                             f'{num_classes} classes')

    def load_data_list(self) -> list[dict]:
        """Read the json, pick the categories, and parse one data info per image (json order)."""
        data = read_coco_json(self.ann_file, self.backend_args)
        if not data['images']:
            # Fail here, naming the file: an empty dataset otherwise fails far away (mmengine's
            # serialisation: "need at least one array to concatenate", or an empty evaluation).
            raise ValueError(f'{self.ann_file}: the annotation file has no images')
        classes, self.cat_ids = select_categories(data['categories'],
                                                  self._metainfo.get('classes'), self.ann_file)
        if 'classes' not in self._metainfo:
            self._metainfo['classes'] = classes
            self._check_or_make_palette(self._metainfo)
        self.cat2label = {cat_id: label for label, cat_id in enumerate(self.cat_ids)}
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
            coco.createIndex()
        # Built from ALL annotations (crowd, 'ignore', unusable boxes too): filter_empty_gt
        # reads it, as mmdet's filter_data reads its cat_img_map.
        self.cat_img_map = {cat_id: list(img_ids) for cat_id, img_ids in coco.catToImgs.items()}
        skipped: list[str] = []
        data_list = [self.parse_data_info(dict(raw_img_info=coco.imgs[img_id],
                                               raw_ann_info=coco.imgToAnns[img_id]), skipped)
                     for img_id in coco.getImgIds()]
        if skipped:
            self._warn_skipped(skipped)
        return data_list

    def parse_data_info(self, raw_data_info: dict, skipped: list[str] | None = None) -> dict:
        """One image: ``raw_img_info`` (COCO image) and ``raw_ann_info`` (its annotations).

        Unusable annotations are described in ``skipped`` (when given) instead of raising.
        """
        img = raw_data_info['raw_img_info']
        instances = []
        for ann in raw_data_info['raw_ann_info']:
            if ann.get('ignore', False) or ann['category_id'] not in self.cat2label:
                continue  # mmdet's 'ignore' key; categories outside metainfo classes are unused
            reason = invalid_box_reason(ann, img)
            if reason is not None:
                if skipped is not None:
                    skipped.append(f"annotation {ann['id']} (image {img['id']} "
                                   f"'{img['file_name']}'): {reason}")
                continue
            x, y, w, h = ann['bbox']
            instance: dict[str, Any] = dict(
                bbox=[float(x), float(y), float(x + w), float(y + h)],
                bbox_label=self.cat2label[ann['category_id']],
                ignore_flag=1 if ann.get('iscrowd', 0) else 0)
            if ann.get('segmentation'):
                instance['mask'] = ann['segmentation']
            instances.append(instance)
        return dict(img_id=img['id'], img_path=osp.join(self.data_prefix['img'], img['file_name']),
                    height=img['height'], width=img['width'], instances=instances)

    def _warn_skipped(self, skipped: list[str]) -> None:
        listed = '\n  '.join(skipped[:MAX_LISTED_SKIPS])
        more = len(skipped) - MAX_LISTED_SKIPS
        tail = f'\n  ... and {more} more' if more > 0 else ''
        print_log(f'{type(self).__name__}: skipped {len(skipped)} annotation(s) of '
                  f'{self.ann_file} that cannot be a box:\n  {listed}{tail}',
                  logger='current', level=logging.WARNING)

    def filter_data(self) -> list[dict]:
        """Training only: apply ``filter_cfg`` (see the class docstring).

        filter_empty_gt keeps exactly the images that mmdet's ``CocoDataset.filter_data`` keeps:
        those listed in ``cat_img_map`` under one of ``cat_ids``, i.e. with at least one
        annotation of the classes, whatever its ``iscrowd`` or box; the parsed ``instances``
        play no part. Raises ValueError naming ``ann_file`` and what each filter removed when no
        image is left.
        """
        if self.test_mode or not self.filter_cfg:
            return self.data_list
        filter_empty_gt = self.filter_cfg.get('filter_empty_gt', False)
        min_size = self.filter_cfg.get('min_size', 0)
        annotated = {img_id for cat_id in self.cat_ids
                     for img_id in self.cat_img_map.get(cat_id, ())}
        kept, too_small, no_ann = [], 0, 0
        for info in self.data_list:
            # An image is counted under the first filter that drops it: min_size, then
            # filter_empty_gt. The kept images do not depend on this order.
            if min(info['width'], info['height']) < min_size:
                too_small += 1
            elif filter_empty_gt and info['img_id'] not in annotated:
                no_ann += 1
            else:
                kept.append(info)
        if not kept:
            why_no_ann = 'no annotation of the classes' if filter_empty_gt else 'off'
            raise ValueError(
                f'{self.ann_file}: no images left for training: {len(self.data_list)} images in '
                f'the file, {too_small} removed by filter_cfg min_size={min_size} (shorter side '
                f'below it), {no_ann} by filter_empty_gt ({why_no_ann})')
        return kept

