# Faster R-CNN R50-FPN, 1x schedule on COCO 2017: mmdetection's recipe (37.4 box AP there).
_base_ = [
    '../_base_/models/faster_rcnn_r50_fpn.py',
    '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime.py',
]
