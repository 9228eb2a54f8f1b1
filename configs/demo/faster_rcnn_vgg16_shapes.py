# Faster R-CNN VGG16 (seed 003's detector, configs/_base_/models/faster_rcnn_vgg16.py) trained
# from random initialisation on rcnn_det's embedded shapes data.
# `python tools/train.py configs/demo/faster_rcnn_vgg16_shapes.py` generates the data (first
# run only), trains, evaluates (COCO bbox mAP on the val split), saves the checkpoint and draws
# predictions on a few val images into work_dirs/faster_rcnn_vgg16_shapes/predictions.png.
# Measured once on a 2-core CPU shared with other jobs: bbox mAP 0.523 (AP50 0.922) in 13 min
# 44 s wall; an iteration took ~0.23 s while the CPU was otherwise idle, ~2 s while shared.
#
# Same data and schedule as configs/demo/faster_rcnn_r18_fpn_shapes.py (their _base_). The model is
# the seed's: VGG16's 13 convs up to conv5_3 at stride 16, no FPN, 9 anchors per location, RoI
# max-pooling to 7 x 7, two shared FC layers, softmax RPN, smooth L1 losses, unnormalised
# offsets. What differs from the seed, for a CPU budget from scratch:
#   - THE BACKBONE IS A QUARTER-WIDTH VGG16: base_channels=16 gives 16-32-64-128-128 channels
#     instead of 64-128-256-512-512 (same 13 convs, 4 max-pools, stride 16). Full width costs
#     ~16x the convolutions and does not fit the budget on a 2-core CPU;
#   - no ImageNet weights can be downloaded: nothing is frozen and every layer is trained;
#   - anchors of 32, 64 and 128 px (scales 2, 4, 8 on stride 16; seed: 128-512 px for
#     800 px images) for objects of 24-84 px in images of at most 224 px, and proposals under
#     4 px dropped (seed: 16 px at 800 px);
#   - fewer proposals (500 before NMS, 200 / 100 kept; seed: 12000 -> 2000, 6000 -> 300) and
#     RoIs (64 per image, half of them positive, ground truths added; seed: 128, a quarter),
#     and 1024-wide FC layers (seed: 4096) over the 128 x 7 x 7 RoI features;
#   - AdamW at 1e-3 with warm-up, cosine decay and gradient clipping (the seed has no
#     optimiser), as the R18 demo.
_base_ = [
    '../_base_/models/faster_rcnn_vgg16.py',
    '../_base_/datasets/shapes_detection.py',
    '../_base_/schedules/shapes_demo.py',
]

width = 16 * 8  # the channels of conv5_3 with base_channels=16 (VGG16: 512)

model = dict(
    backbone=dict(base_channels=16, frozen_stages=-1, init_cfg=None),
    rpn_head=dict(
        in_channels=width,
        feat_channels=width,
        anchor_generator=dict(scales=[2, 4, 8])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        # num_classes: circle, square, triangle, star (_base_/datasets/shapes_detection.py)
        bbox_head=dict(in_channels=width, fc_out_channels=1024, num_classes=4)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200, min_bbox_size=4),
        rcnn=dict(sampler=dict(num=64, pos_fraction=0.5, add_gt_as_proposals=True))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100, min_bbox_size=4)))
