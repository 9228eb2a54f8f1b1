# Mask R-CNN R50-FPN, 1x schedule on COCO 2017: mmdetection's recipe (38.2 box AP, 34.7 mask AP
# there).
_base_ = [
    '../_base_/models/mask_rcnn_r50_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime.py',
]
