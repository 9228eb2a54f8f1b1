# Faster R-CNN VGG16 (seed 003's detector, configs/_base_/models/faster_rcnn_vgg16.py) trained
# from random initialisation on rcnn_det's embedded shapes data.
# `python tools/train.py configs/demo/faster_rcnn_vgg16_shapes.py` generates the data (first
# run only), trains, evaluates (COCO bbox mAP on the val split), saves the checkpoint and draws
# predictions on a few val images into work_dirs/faster_rcnn_vgg16_shapes/predictions.png.
# Measured once on a 2-core CPU shared with other jobs: bbox mAP 0.523 (AP50 0.922) in 13 min
# 44 s wall; an iteration took ~0.23 s while the CPU was otherwise idle, ~2 s while shared.
#
# Same data, pipeline and optimiser as configs/demo/faster_rcnn_r18_fpn_shapes.py. The model is
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
    '../_base_/default_runtime.py',
]

data_root = 'data/shapes/'
classes = ('circle', 'square', 'triangle', 'star')
shapes_cfg = dict(num_train=1000, num_val=120, img_size=(160, 256), obj_size=(28, 96))
max_iters = 800
image_scale = (224, 224)
width = 16 * 8  # the channels of conv5_3 with base_channels=16 (VGG16: 512)

model = dict(
    backbone=dict(base_channels=16, frozen_stages=-1, init_cfg=None),
    rpn_head=dict(
        in_channels=width,
        feat_channels=width,
        anchor_generator=dict(scales=[2, 4, 8])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(in_channels=width, fc_out_channels=1024, num_classes=len(classes))),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200, min_bbox_size=4),
        rcnn=dict(sampler=dict(num=64, pos_fraction=0.5, add_gt_as_proposals=True))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100, min_bbox_size=4)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type='ShapesDataset',
        data_root=data_root,
        shapes_cfg=shapes_cfg,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        metainfo=dict(classes=classes),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='ShapesDataset',
        data_root=data_root,
        shapes_cfg=shapes_cfg,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        metainfo=dict(classes=classes),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoMetric', ann_file=data_root + 'annotations/instances_val.json', metric='bbox')
test_evaluator = val_evaluator

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    type='OptimWrapper',
    # fused: one kernel for all parameters; the per-tensor loop costs ~0.1 s per step on a CPU
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4, fused=True),
    clip_grad=dict(max_norm=10, norm_type=2))
# lr 1e-3 is for 4 images per iteration: `--auto-scale-lr` rescales it for other totals
auto_scale_lr = dict(enable=False, base_batch_size=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters, eta_min=2e-5)
]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=200, max_keep_ckpts=1),
    visualization=dict(
        type='DetVisualizationHook', draw=True, interval=1, grid_images=6, score_thr=0.5))
log_processor = dict(type='LogProcessor', window_size=20, by_epoch=False)
randomness = dict(seed=0)
