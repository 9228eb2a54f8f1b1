"""``VOCDataset``: the Pascal VOC layout -> one data info per image (mmdetection 3.x semantics).

Layout (mmdet's ``configs/_base_/datasets/voc0712.py``), relative to ``data_root``:
    ann_file                        VOC2007/ImageSets/Main/{trainval,test}.txt, one image id a line
    data_prefix['sub_data_root']    VOC2007/
    <sub_data_root>/JPEGImages/<id>.jpg and <sub_data_root>/Annotations/<id>.xml

Each data info, in the format of ``CocoDataset``:
    img_id (the id string), img_path, xml_path, height, width,
    instances: list of dict(bbox=[x1, y1, x2, y2] float px, bbox_label in [0, C), ignore_flag)
where C = len(metainfo['classes']). As mmdet's ``XMLDataset.parse_data_info``, the 1-based VOC
corners are truncated to int and shifted by -1 (all four: [xmin-1, ymin-1, xmax-1, ymax-1]);
``VOCMetric`` adds the +1 back in its widths (the legacy coordinates of the VOC devkit).
"""
from __future__ import annotations

import os.path as osp
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Callable

import mmcv
from mmengine.fileio import get, get_local_path, list_from_file
from mmengine.registry import DefaultScope

from rcnn_det.datasets.coco import distinct_palette
from rcnn_det.registry import DATASETS

from .base_det_dataset import BaseDetDataset

VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
               'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
               'sheep', 'sofa', 'train', 'tvmonitor')
VOC_PALETTE = [(106, 0, 228), (119, 11, 32), (165, 42, 42), (0, 0, 192), (197, 226, 255),
               (0, 60, 100), (0, 0, 142), (255, 77, 255), (153, 69, 1), (120, 166, 157),
               (0, 182, 199), (0, 226, 252), (182, 182, 255), (0, 0, 230), (220, 20, 60),
               (163, 255, 0), (0, 82, 0), (3, 95, 161), (0, 80, 100), (183, 130, 88)]  # mmdet's
FILTER_CFG_KEYS = ('filter_empty_gt', 'min_size', 'bbox_min_size')
BOX_TAGS = ('xmin', 'ymin', 'xmax', 'ymax')


def xml_int(node: ET.Element | None, tag: str, xml_path: str, what: str) -> int:
    """``int(float(text))`` of child ``tag`` of ``node`` (mmdet's parsing); errors name the file."""
    child = None if node is None else node.find(tag)
    try:
        return int(float(child.text))  # type: ignore[union-attr, arg-type]
    except (AttributeError, TypeError, ValueError) as e:
        text = None if child is None else child.text
        raise ValueError(f'{xml_path}: {what} has no numeric <{tag}> (got {text!r})') from e


def read_xml(xml_path: str, backend_args: dict | None) -> ET.Element:
    """The root of a VOC annotation file; a missing or malformed file is an error naming it."""
    try:
        with get_local_path(xml_path, backend_args=backend_args) as local_path:
            return ET.parse(local_path).getroot()
    except FileNotFoundError as e:
        raise FileNotFoundError(f'VOC annotation file not found: {xml_path}') from e
    except ET.ParseError as e:
        raise ValueError(f'{xml_path} is not a valid VOC annotation xml: {e}') from e


@DATASETS.register_module()
class VOCDataset(BaseDetDataset):
    """Pascal VOC detection (mmdetection 3.x's ``VOCDataset`` / ``XMLDataset`` arguments).

    Args:
        ann_file: image-set file (one image id a line), relative to ``data_root``.
        metainfo: ``dict(classes=(...), palette=[...])``; default the 20 VOC classes.
        data_prefix: ``dict(sub_data_root='VOC2007/')``, relative to ``data_root``.
        filter_cfg: training only. ``filter_empty_gt`` drops images without any instance of the
            classes (difficult ones count, as mmdet); ``min_size`` drops images whose shorter
            side is below it; ``bbox_min_size`` marks boxes narrower or lower than it ignored.
        img_subdir, ann_subdir: folders under ``sub_data_root`` ('JPEGImages', 'Annotations').
        backend_args: mmengine file backend arguments for the set file, xmls and images.
        Others: as mmengine's ``BaseDataset``.

    Image size comes from the xml's <size>, else from reading the image. Objects whose <name> is
    not a class are skipped; <difficult>1</difficult> gives ``ignore_flag=1``. ``metainfo``
    gains ``dataset_type``: 'VOC2007' / 'VOC2012' when ``sub_data_root`` names it, else None
    (``VOCMetric`` warns when the AP mode is not that year's).
    """

    METAINFO: dict = dict(classes=VOC_CLASSES, palette=VOC_PALETTE)

    def __init__(self, ann_file: str = '', metainfo: Mapping | None = None, data_root: str = '',
                 data_prefix: dict = dict(sub_data_root=''), filter_cfg: dict | None = None,
                 indices: int | Sequence[int] | None = None, serialize_data: bool = True,
                 pipeline: Sequence[dict | Callable] = (), test_mode: bool = False,
                 lazy_init: bool = False, max_refetch: int = 1000,
                 img_subdir: str = 'JPEGImages', ann_subdir: str = 'Annotations',
                 backend_args: dict | None = None) -> None:
        if set(data_prefix) - {'sub_data_root'}:
            raise ValueError("VOCDataset: data_prefix must be dict(sub_data_root='VOC2007/'), "
                             f'got {data_prefix}')
        unknown = set(filter_cfg or {}) - set(FILTER_CFG_KEYS)
        if unknown:
            raise ValueError(f'VOCDataset: filter_cfg has unknown key(s) {sorted(unknown)}; '
                             f'expected {list(FILTER_CFG_KEYS)}')
        if test_mode and (filter_cfg or {}).get('bbox_min_size') is not None:
            raise ValueError('VOCDataset: filter_cfg bbox_min_size is for training only (it '
                             'would hide ground truth from the evaluation)')
        self.img_subdir, self.ann_subdir = img_subdir, ann_subdir
        self.backend_args = backend_args
        # As CocoDataset: a dataset built by hand must build its pipeline from OUR registry.
        scope = None if DefaultScope.get_current_instance() is not None else 'rcnn_det'
        with DefaultScope.overwrite_default_scope(scope):
            super().__init__(ann_file=ann_file, metainfo=metainfo, data_root=data_root,
                             data_prefix={'sub_data_root': '', **data_prefix},
                             filter_cfg=filter_cfg, indices=indices,
                             serialize_data=serialize_data, pipeline=list(pipeline),
                             test_mode=test_mode, lazy_init=lazy_init, max_refetch=max_refetch)
        year = [y for y in ('VOC2007', 'VOC2012') if y in self.sub_data_root]
        self._metainfo['dataset_type'] = year[0] if year else None

    @classmethod
    def _load_metainfo(cls, metainfo: Mapping | None = None) -> dict:
        meta = super()._load_metainfo(metainfo)
        classes = meta['classes']
        if (isinstance(classes, str) or not all(isinstance(c, str) for c in classes)
                or len(set(classes)) != len(classes)):
            raise ValueError(f'metainfo classes must be distinct names, got {classes!r}')
        meta['classes'] = tuple(classes)
        if len(meta.get('palette', ())) != len(classes):
            # Classes given without (or with another number of) colours: the default palette
            # belongs to the 20 VOC classes, so give each class one of VOC's or a generated one.
            if 'palette' in (metainfo or {}):
                raise ValueError(f"metainfo palette has {len(meta['palette'])} colours for "
                                 f'{len(classes)} classes')
            meta['palette'] = distinct_palette(len(classes))
        return meta

    @property
    def sub_data_root(self) -> str:
        """``data_prefix['sub_data_root']`` joined with ``data_root`` (e.g. 'data/VOC2007/')."""
        return self.data_prefix.get('sub_data_root', '')

    @property
    def bbox_min_size(self) -> float | None:
        """``filter_cfg['bbox_min_size']``: smaller boxes are ignored (mmdet's XMLDataset)."""
        return (self.filter_cfg or {}).get('bbox_min_size')

    def load_data_list(self) -> list[dict]:
        """Read the image-set file and parse each image's xml (file order)."""
        try:
            img_ids = list_from_file(self.ann_file, backend_args=self.backend_args)
        except FileNotFoundError as e:
            raise FileNotFoundError(f'VOC image-set file not found: {self.ann_file}') from e
        img_ids = [img_id.strip() for img_id in img_ids if img_id.strip()]
        if not img_ids:
            raise ValueError(f'{self.ann_file}: the image-set file lists no images')
        self.cat2label = {name: i for i, name in enumerate(self._metainfo['classes'])}
        return [self.parse_data_info(dict(
            img_id=img_id, file_name=osp.join(self.img_subdir, f'{img_id}.jpg'),
            xml_path=osp.join(self.sub_data_root, self.ann_subdir, f'{img_id}.xml')))
            for img_id in img_ids]

    def parse_data_info(self, img_info: dict) -> dict:
        """One image from ``img_info`` = dict(img_id, file_name, xml_path) (mmdet's keys)."""
        xml_path = img_info['xml_path']
        img_path = osp.join(self.sub_data_root, img_info['file_name'])
        root = read_xml(xml_path, self.backend_args)
        size = root.find('size')
        if size is not None and size.find('width') is not None:
            width = xml_int(size, 'width', xml_path, '<size>')
            height = xml_int(size, 'height', xml_path, '<size>')
        else:
            img = mmcv.imfrombytes(get(img_path, backend_args=self.backend_args), backend='cv2')
            if img is None:
                raise ValueError(f'{xml_path} has no <size> and {img_path} is not an image')
            height, width = img.shape[:2]
        return dict(img_id=img_info['img_id'], img_path=img_path, xml_path=xml_path,
                    height=height, width=width,
                    instances=self._parse_instances(root, xml_path))

    def _parse_instances(self, root: ET.Element, xml_path: str) -> list[dict]:
        """The <object>s of one xml whose <name> is a class, as CocoDataset's instances."""
        instances = []
        for i, obj in enumerate(root.findall('object')):
            name = obj.findtext('name')
            if name is None:
                raise ValueError(f'{xml_path}: <object> #{i} has no <name>')
            if name.strip() not in self.cat2label:
                continue
            what = f"<object> #{i} ('{name.strip()}') <bndbox>"
            x1, y1, x2, y2 = (xml_int(obj.find('bndbox'), tag, xml_path, what) - 1
                              for tag in BOX_TAGS)
            ignore = (obj.find('difficult') is not None
                      and xml_int(obj, 'difficult', xml_path, f'<object> #{i}') != 0)
            if self.bbox_min_size is not None:
                ignore |= min(x2 - x1, y2 - y1) < self.bbox_min_size
            instances.append(dict(bbox=[float(x1), float(y1), float(x2), float(y2)],
                                  bbox_label=self.cat2label[name.strip()],
                                  ignore_flag=int(ignore)))
        return instances

    def filter_data(self) -> list[dict]:
        """Training only: mmdet's ``XMLDataset.filter_data`` (see the class docstring), but an
        empty result is a ValueError naming ``ann_file`` (as CocoDataset) instead of an empty
        dataset."""
        if self.test_mode or not self.filter_cfg:
            return self.data_list
        filter_empty_gt = self.filter_cfg.get('filter_empty_gt', False)
        min_size = self.filter_cfg.get('min_size', 0)
        kept = [info for info in self.data_list
                if not (filter_empty_gt and not info['instances'])
                and min(info['width'], info['height']) >= min_size]
        if not kept:
            raise ValueError(f'{self.ann_file}: no images left for training: filter_cfg '
                             f'{self.filter_cfg} removed all {len(self.data_list)} images')
        return kept

