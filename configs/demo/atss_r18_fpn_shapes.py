# ATSS R18-FPN trained from random initialisation on rcnn_det's embedded shapes data.
# `python tools/train.py configs/demo/atss_r18_fpn_shapes.py` generates the data (first run
# only), trains, evaluates (COCO bbox mAP on the val split), saves the checkpoint and draws
# predictions on a few val images into work_dirs/atss_r18_fpn_shapes/predictions.png, within 15
# minutes on a 2-core CPU.
#
# The data and optimizer are the Faster R-CNN demo's (see faster_rcnn_r18_fpn_shapes.py for why),
# trained for 1500 iterations instead of 800 (measured: 0.615 bbox mAP after 800, 0.884 after
# 1500: a one-stage head learns its classes from every anchor, more slowly than an RoI head on
# sampled proposals); the model is mmdetection's ATSS recipe sized for 224 px inputs:
#   - FPN from C3 with extra levels from its outputs (as the COCO recipe), but 4 levels (strides
#     8-64) of 128 channels instead of 5 of 256: the objects are 28-96 px;
#   - anchors of 4x the stride (32-256 px; COCO: 8x); ATSS picks positives by centre distance
#     and adaptive IoU thresholds, so the anchor size matters less than for the RPN;
#   - the head's four GroupNorm convs per branch at 128 channels.
_base_ = './faster_rcnn_r18_fpn_shapes.py'

classes = ('circle', 'square', 'triangle', 'star')
max_iters = 1500

model = dict(
    _delete_=True,
    type='ATSS',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32),
    backbone=dict(
        type='ResNet',
        depth=18,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        zero_init_residual=True,
        style='pytorch',
        init_cfg=None),
    neck=dict(
        type='FPN',
        in_channels=[64, 128, 256, 512],
        out_channels=128,
        start_level=1,
        add_extra_convs='on_output',
        num_outs=4),
    bbox_head=dict(
        type='ATSSHead',
        num_classes=len(classes),
        in_channels=128,
        stacked_convs=4,
        feat_channels=128,
        anchor_generator=dict(
            type='AnchorGenerator',
            ratios=[1.0],
            octave_base_scale=4,
            scales_per_octave=1,
            strides=[8, 16, 32, 64]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[.0, .0, .0, .0],
            target_stds=[0.1, 0.1, 0.2, 0.2]),
        loss_cls=dict(
            type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    train_cfg=dict(
        assigner=dict(type='ATSSAssigner', topk=9),
        allowed_border=-1,
        pos_weight=-1,
        debug=False),
    test_cfg=dict(
        nms_pre=1000,
        min_bbox_size=0,
        score_thr=0.05,
        nms=dict(type='nms', iou_threshold=0.6),
        max_per_img=100))

train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters, eta_min=2e-5)
]
