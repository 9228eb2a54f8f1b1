# Mask R-CNN R50-FPN as matterport's Keras Mask R-CNN sets it up (github.com/matterport/Mask_RCNN,
# mrcnn/config.py defaults; seed document 002), written as changes to mmdetection's recipe
# (mask_rcnn_r50_fpn_1x_coco.py). Each changed line names matterport's setting and mmdetection's
# value. docs/seed_systems.md tabulates all settings and what rcnn_det cannot express exactly:
# the image is padded at the bottom/right (matterport centres it), the pre-NMS limit applies per
# FPN level (matterport: over all levels), box losses are averaged over all sampled anchors/RoIs
# (matterport: over positives), and more.
_base_ = './mask_rcnn_r50_fpn_1x_coco.py'

# Kept from mmdetection on purpose:
# - backbone: ResNet-50, as the seed describes (matterport's default is ResNet-101:
#   backbone=dict(depth=101)), style 'pytorch' to match torchvision's ImageNet weights
#   (matterport strides in the first 1x1 conv of a stage, 'caffe' style, for Keras's weights);
# - data_preprocessor mean/std: tied to those weights (matterport subtracts MEAN_PIXEL only);
# - anchors: RPN_ANCHOR_SCALES (32, 64, 128, 256, 512), one per level P2-P6, RPN_ANCHOR_RATIOS
#   (0.5, 1, 2) = scales [8] x strides [4, 8, 16, 32, 64], mmdetection's anchors too;
# - FPN (P6 = stride-2 max-pool of P5), RoI sizes POOL_SIZE 7 / MASK_POOL_SIZE 14, MASK_SHAPE 28,
#   the mask head's 4 convs + deconv, BBOX_STD_DEV (0.1, 0.1, 0.2, 0.2), RPN_NMS_THRESHOLD 0.7,
#   RPN_TRAIN_ANCHORS_PER_IMAGE 256 with at most half positive, IoU thresholds (RPN 0.7 / 0.3,
#   RoIs 0.5), DETECTION_MAX_INSTANCES 100, mask threshold 0.5, IMAGES_PER_GPU 2.
model = dict(
    rpn_head=dict(
        feat_channels=512,  # rpn_conv_shared: 512 channels (mmdet: 256)
        bbox_coder=dict(target_stds=[0.1, 0.1, 0.2, 0.2]),  # RPN_BBOX_STD_DEV (mmdet: 1, 1, 1, 1)
        loss_cls=dict(use_sigmoid=False),  # 2-way softmax (bg, fg) per anchor (mmdet: sigmoid)
        loss_bbox=dict(type='SmoothL1Loss', beta=1.0)),  # smooth L1, threshold 1 (mmdet: L1)
    roi_head=dict(
        # A RoI goes to level 4 + round(log2(sqrt(wh) / 224)); mmdet floors log2(sqrt(wh) / 56),
        # and finest_scale = 224 / 2 ** 2.5 = 28 * sqrt(2) makes that floor this rounding
        # (mmdet: 56).
        bbox_roi_extractor=dict(finest_scale=28 * 2 ** 0.5),
        mask_roi_extractor=dict(finest_scale=28 * 2 ** 0.5),
        bbox_head=dict(
            loss_bbox=dict(type='SmoothL1Loss', beta=1.0))),  # smooth L1 (mmdet: L1)
    train_cfg=dict(
        rpn=dict(
            assigner=dict(
                min_pos_iou=0.0,  # each gt's best anchors are positive at any IoU (mmdet: 0.3)
                ignore_iof_thr=0.001)),  # anchors touching a crowd box: no negatives (mmdet: -1)
        rpn_proposal=dict(
            nms_pre=6000,  # PRE_NMS_LIMIT, here per level (mmdet: 2000 per level)
            max_per_img=2000),  # POST_NMS_ROIS_TRAINING (mmdet: 1000)
        rcnn=dict(
            assigner=dict(ignore_iof_thr=0.001),  # RoIs touching a crowd: no negatives (mmdet: -1)
            sampler=dict(
                num=200,  # TRAIN_ROIS_PER_IMAGE (mmdet: 512)
                pos_fraction=0.33,  # ROI_POSITIVE_RATIO (mmdet: 0.25)
                # negatives = int(positives / 0.33) - positives, not "fill up to 200" (mmdet: -1)
                neg_pos_ub=1 / 0.33 - 1,
                add_gt_as_proposals=False))),  # RPN proposals only (mmdet: gt boxes added)
    test_cfg=dict(
        rpn=dict(
            nms_pre=6000,  # PRE_NMS_LIMIT, here per level (mmdet: 1000 per level)
            max_per_img=1000),  # POST_NMS_ROIS_INFERENCE (mmdet: 1000 too)
        rcnn=dict(
            score_thr=0.7,  # DETECTION_MIN_CONFIDENCE (mmdet: 0.05)
            nms=dict(type='nms', iou_threshold=0.3))))  # DETECTION_NMS_THRESHOLD (mmdet: 0.5)

# IMAGE_RESIZE_MODE 'square': the shorter side to IMAGE_MIN_DIM 800 unless the longer side would
# pass IMAGE_MAX_DIM 1024, then zero padding to 1024 x 1024 (a 640 x 480 image: 1024 x 768, padded
# to 1024 x 1024). matterport centres the image in the square and never scales an image down to
# reach 800; rcnn_det pads at the bottom/right and does (docs/seed_systems.md).
backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(1024, 800), keep_ratio=True),  # (mmdet: (1333, 800))
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size=(1024, 1024), pad_val=dict(img=0)),  # square, zeros (mmdet: no Pad)
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(1024, 800), keep_ratio=True),  # (mmdet: (1333, 800))
    dict(type='Pad', size=(1024, 1024), pad_val=dict(img=0)),  # square, zeros (mmdet: no Pad)
    # ground truth is loaded after the resize so that it stays in the original frame
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# LEARNING_RATE 0.001, LEARNING_MOMENTUM 0.9 and WEIGHT_DECAY 1e-4 (both as mmdet), for
# IMAGES_PER_GPU 2 x GPU_COUNT 1 = 2 images per step. matterport's L2 term is divided by each
# tensor's size, which SGD's weight_decay cannot express (docs/seed_systems.md).
optim_wrapper = dict(
    optimizer=dict(lr=0.001),  # LEARNING_RATE (mmdet: 0.02 for 16 images)
    clip_grad=dict(max_norm=5.0, norm_type=2),  # GRADIENT_CLIP_NORM (mmdet: no clipping)
    paramwise_cfg=dict(norm_decay_mult=0.0))  # no L2 on BN gamma/beta (mmdet: decayed)
auto_scale_lr = dict(base_batch_size=2)  # the lr above is for 2 images per step (mmdet: 16)
param_scheduler = [
    # no warm-up (mmdet: linear over 500 iterations); mmdetection's 1x steps kept
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
