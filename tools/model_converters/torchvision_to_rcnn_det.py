"""Convert a torchvision Faster R-CNN / Mask R-CNN R50-FPN state dict to an rcnn_det checkpoint.

    python tools/model_converters/torchvision_to_rcnn_det.py SRC DST [--coco-categories]

SRC is a file saved with ``torch.save(model.state_dict(), SRC)`` for torchvision's
``fasterrcnn_resnet50_fpn`` or ``maskrcnn_resnet50_fpn`` (or a torchvision reference-training
checkpoint with the state dict under ``'model'``); DST is an mmengine checkpoint for
``configs/torchvision/{fasterrcnn,maskrcnn}_resnet50_fpn_coco.py``. Both the current torchvision
key layout (``rpn.head.conv.0.0``, ``mask_head.0.0``) and the one of the published weights
(``rpn.head.conv``, ``mask_head.mask_fcn1``) are accepted.

Classes: torchvision puts the background at index 0 of the classifier, rcnn_det (as mmdet) last;
the rows are reordered and the background's box-regression and mask channels dropped, so class
k of rcnn_det is class k + 1 of torchvision. ``--coco-categories``: torchvision's COCO models
have 91 outputs indexed by COCO category id (the 11 ids COCO does not use are never trained);
keep only the 80 real categories, in ``CocoDataset``'s order, so the checkpoint works with
rcnn_det's COCO configs. Their scores then come from a softmax over 81 instead of 91 logits,
which can only raise them by the (tiny) probability torchvision gave the unused ids.
"""
from __future__ import annotations

import argparse
import re
from collections import OrderedDict

import torch

# COCO 2017's 80 category ids, sorted: the order of CocoDataset's labels.
COCO_CATEGORY_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                     23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
                     46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64,
                     65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88,
                     89, 90]

# (torchvision key pattern, rcnn_det key template); the first match wins
RENAMES = [
    (r'backbone\.body\.(.+)', r'backbone.\1'),
    (r'backbone\.fpn\.inner_blocks\.(\d+)\.(?:0\.)?(weight|bias)',
     r'neck.lateral_convs.\1.conv.\2'),
    (r'backbone\.fpn\.layer_blocks\.(\d+)\.(?:0\.)?(weight|bias)', r'neck.fpn_convs.\1.conv.\2'),
    (r'rpn\.head\.conv\.(?:0\.0\.)?(weight|bias)', r'rpn_head.rpn_conv.\1'),
    (r'rpn\.head\.cls_logits\.(weight|bias)', r'rpn_head.rpn_cls.\1'),
    (r'rpn\.head\.bbox_pred\.(weight|bias)', r'rpn_head.rpn_reg.\1'),
    (r'roi_heads\.box_head\.fc6\.(weight|bias)', r'roi_head.bbox_head.shared_fcs.0.\1'),
    (r'roi_heads\.box_head\.fc7\.(weight|bias)', r'roi_head.bbox_head.shared_fcs.1.\1'),
    (r'roi_heads\.box_predictor\.cls_score\.(weight|bias)', r'roi_head.bbox_head.fc_cls.\1'),
    (r'roi_heads\.box_predictor\.bbox_pred\.(weight|bias)', r'roi_head.bbox_head.fc_reg.\1'),
    (r'roi_heads\.mask_predictor\.conv5_mask\.(weight|bias)', r'roi_head.mask_head.upsample.\1'),
    (r'roi_heads\.mask_predictor\.mask_fcn_logits\.(weight|bias)',
     r'roi_head.mask_head.conv_logits.\1'),
]
_MASK_CONV_NEW = re.compile(r'roi_heads\.mask_head\.(\d+)\.0\.(weight|bias)')
_MASK_CONV_OLD = re.compile(r'roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)')


def rename(key: str) -> str:
    """The rcnn_det name of one torchvision key; KeyError for a key of no known layer."""
    match = _MASK_CONV_NEW.fullmatch(key)
    if match:
        return f'roi_head.mask_head.convs.{match[1]}.conv.{match[2]}'
    match = _MASK_CONV_OLD.fullmatch(key)
    if match:
        return f'roi_head.mask_head.convs.{int(match[1]) - 1}.conv.{match[2]}'
    for pattern, template in RENAMES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, template, key)
    raise KeyError(f'torchvision_to_rcnn_det: no rcnn_det layer for the key {key!r}; is this a '
                   f'fasterrcnn_resnet50_fpn / maskrcnn_resnet50_fpn state dict?')


def convert(state_dict: dict, classes: list[int] | None = None) -> OrderedDict:
    """torchvision state dict -> rcnn_det state dict.

    Args:
        classes: the torchvision class indices to keep, in rcnn_det's label order; default
            1..K-1 (every class but the background 0).
    """
    num_outputs = state_dict['roi_heads.box_predictor.cls_score.weight'].shape[0]
    classes = list(range(1, num_outputs)) if classes is None else list(classes)
    if any(not 0 < c < num_outputs for c in classes):
        raise ValueError(f'torchvision_to_rcnn_det: class indices must be in 1..{num_outputs - 1}'
                         f' (0 is the background), got {classes}')
    fg = torch.tensor(classes)
    cls_rows = torch.cat([fg, torch.zeros(1, dtype=torch.long)])        # background last
    reg_rows = (fg[:, None] * 4 + torch.arange(4)).flatten()
    converted = OrderedDict()
    for key, value in state_dict.items():
        new_key = rename(key)
        if new_key.startswith('roi_head.bbox_head.fc_cls'):
            value = value[cls_rows]
        elif new_key.startswith('roi_head.bbox_head.fc_reg'):
            value = value[reg_rows]
        elif new_key.startswith('roi_head.mask_head.conv_logits'):
            value = value[fg]
        converted[new_key] = value.clone()
        # FrozenBatchNorm2d has no step counter; rcnn_det's BatchNorm2d does
        if new_key.endswith('running_var'):
            counter = new_key[:-len('running_var')] + 'num_batches_tracked'
            if counter.replace('backbone.', 'backbone.body.', 1) not in state_dict:
                converted[counter] = torch.tensor(0, dtype=torch.long)
    return converted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='torchvision state dict (.pth)')
    parser.add_argument('dst', help='rcnn_det checkpoint to write')
    parser.add_argument('--coco-categories', action='store_true',
                        help="keep the 80 COCO categories of a 91-output COCO model, in "
                             "CocoDataset's label order")
    args = parser.parse_args()
    state_dict = torch.load(args.src, map_location='cpu', weights_only=True)
    if 'model' in state_dict and isinstance(state_dict['model'], dict):
        state_dict = state_dict['model']          # a torchvision references/detection checkpoint
    classes = None
    if args.coco_categories:
        outputs = state_dict['roi_heads.box_predictor.cls_score.weight'].shape[0]
        if outputs != 91:
            parser.error(f'--coco-categories needs a 91-output COCO model; {args.src} has '
                         f'{outputs} outputs')
        classes = COCO_CATEGORY_IDS
    converted = convert(state_dict, classes)
    torch.save(dict(state_dict=converted, meta=dict(converted_from=args.src)), args.dst)
    num_classes = converted['roi_head.bbox_head.fc_cls.weight'].shape[0] - 1
    print(f'{len(state_dict)} torchvision keys -> {len(converted)} rcnn_det keys '
          f'({num_classes} classes) written to {args.dst}')


if __name__ == '__main__':
    main()
