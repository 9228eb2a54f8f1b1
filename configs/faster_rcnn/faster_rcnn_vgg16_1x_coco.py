# Faster R-CNN VGG16 (no FPN), 1x schedule on COCO 2017: the hand-built Faster R-CNN of
# seed 003 (VGG16 features at stride 16, 9 anchors of 128-512 px, RoI pooling, two
# 4096-wide FC layers) with mmdetection's COCO data pipeline and 1x schedule. The seed's
# choices are commented in the model file; docs/seed_systems.md lists them step by step.
_base_ = [
    '../_base_/models/faster_rcnn_vgg16.py',
    '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime.py',
]
# Not in the seed: the seed feeds one 800 x 800 image; the COCO pipeline resizes each image to
# fit 1333 x 800 (keeping its aspect ratio), so the shorter side gives the seed's 50-cell map.
