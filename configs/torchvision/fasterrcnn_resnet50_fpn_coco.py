# torchvision's fasterrcnn_resnet50_fpn, exactly (torchvision/models/detection/faster_rcnn.py and
# its COCO reference recipe, references/detection): same preprocessing, anchors, proposal
# filtering, RoIAlign, box coding, post-processing and training recipe, on rcnn_det's parts.
# With weights converted by tools/model_converters/torchvision_to_rcnn_det.py its predictions
# equal torchvision's (tests/test_tools/test_torchvision_converter.py).
_base_ = '../faster_rcnn/faster_rcnn_r50_fpn_1x_coco.py'

model = dict(
    # torchvision: images in [0, 1] normalised by ImageNet's RGB mean/std (the same numbers x
    # 255 here), zero-padded (after normalisation) to a multiple of 32
    data_preprocessor=dict(
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
        pad_size_divisor=32),
    # trainable_backbone_layers=3: stem and layer1 frozen; FrozenBatchNorm2d everywhere
    backbone=dict(frozen_stages=1, norm_cfg=dict(type='BN', requires_grad=False),
                  norm_eval=True),
    rpn_head=dict(
        # sizes ((32,), (64,), (128,), (256,), (512,)) on P2-P6 x ratios (0.5, 1, 2); torchvision
        # rounds the base anchors to whole pixels
        anchor_generator=dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0],
                              strides=[4, 8, 16, 32, 64], round_base_anchors=True),
        # RPN box coder weights (1, 1, 1, 1); smooth L1 with beta 1/9 over the sampled anchors
        loss_bbox=dict(_delete_=True, type='SmoothL1Loss', beta=1.0 / 9.0, loss_weight=1.0)),
    roi_head=dict(
        # MultiScaleRoIAlign(output_size=7, sampling_ratio=2), without the half-pixel offset;
        # its level mapper (canonical scale 224 on level 4) equals finest_scale 56 on P2
        bbox_roi_extractor=dict(
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2, aligned=False),
            finest_scale=56),
        bbox_head=dict(
            # box coder weights (10, 10, 5, 5) = stds (0.1, 0.1, 0.2, 0.2); dw/dh clamped at
            # log(1000 / 16) in both
            bbox_coder=dict(target_stds=[0.1, 0.1, 0.2, 0.2]),
            loss_bbox=dict(_delete_=True, type='SmoothL1Loss', beta=1.0 / 9.0,
                           loss_weight=1.0))),
    train_cfg=dict(
        # Matcher(0.7, 0.3, allow_low_quality_matches=True): every anchor tied for a gt's best
        # IoU becomes positive, whatever that IoU is
        rpn=dict(assigner=dict(min_pos_iou=0.0)),
        # rpn_pre_nms_top_n_train=2000 per level, rpn_post_nms_top_n_train=2000,
        # min_size 1e-3
        rpn_proposal=dict(nms_pre=2000, max_per_img=2000, min_bbox_size=1e-3,
                          nms=dict(type='nms', iou_threshold=0.7))),
    test_cfg=dict(
        # rpn_pre_nms_top_n_test=1000 per level, rpn_post_nms_top_n_test=1000
        rpn=dict(nms_pre=1000, max_per_img=1000, min_bbox_size=1e-3,
                 nms=dict(type='nms', iou_threshold=0.7)),
        # box_score_thresh=0.05, boxes smaller than 1e-2 px dropped, box_nms_thresh=0.5,
        # box_detections_per_img=100
        rcnn=dict(score_thr=0.05, min_bbox_size=1e-2, nms=dict(type='nms', iou_threshold=0.5),
                  max_per_img=100)))

# GeneralizedRCNNTransform(min_size=800, max_size=1333): torchvision's own resize
# (floor of the scaled size, float bilinear interpolation); training flips with p=0.5
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='TorchvisionResize', min_size=800, max_size=1333),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TorchvisionResize', min_size=800, max_size=1333),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
# the reference drops images without a usable annotation, and crowd boxes; no size filter
train_dataloader = dict(
    dataset=dict(pipeline=train_pipeline, filter_cfg=dict(filter_empty_gt=True, min_size=0)))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# references/detection: 26 epochs, lr 0.02 for 16 images (8 GPUs x 2) steps at epochs 16 and
# 22, SGD momentum 0.9, weight decay 1e-4, linear warm-up from 0.001 over 1000 iterations
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=26, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=26, by_epoch=True, milestones=[16, 22], gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4))
