# Faster R-CNN with a VGG16 backbone and no FPN: the hand-built detector of
# seed 003, the "build Faster R-CNN in PyTorch" walk-through, as rcnn_det parts.
# "seed:" marks a value taken from that walk-through; other values are mmdetection's defaults
# or say where they come from. docs/seed_systems.md maps every step of the seed to these keys.
model = dict(
    type='FasterRCNN',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        # torchvision's ImageNet VGG16 expects RGB normalised by these (the seed feeds zeros)
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        # one stride-16 map: a multiple of 16 is all the network needs
        pad_size_divisor=16),
    backbone=dict(
        type='VGG',
        depth=16,
        # seed: torchvision's vgg16().features[:30], i.e. up to conv5_3 + ReLU without the
        # fifth max-pool: one map of 512 channels at stride 16 (800 x 800 -> 50 x 50)
        with_last_pool=False,
        out_indices=(4, ),
        # not in the seed: conv1_x and conv2_x stay fixed, as the Fast/Faster R-CNN papers
        # fine-tune VGG16 from conv3_1 up
        frozen_stages=2,
        norm_cfg=None,
        # seed: ImageNet weights (vgg16(pretrained=True)); a torchvision state dict saved
        # locally, e.g. torch.save(torchvision.models.vgg16(weights='IMAGENET1K_V1')
        # .state_dict(), path). Its classifier (fc6-fc8) is skipped with a log line.
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vgg16-397923af.pth')),
    neck=None,  # seed: the RPN and the RoI pooling read the backbone map directly
    rpn_head=dict(
        type='RPNHead',
        in_channels=512,
        # seed: a 3x3 conv 512 -> 512 (mid_channels), then 1x1 convs for 9 x 2 scores and
        # 9 x 4 offsets; all three initialised N(0, 0.01), RPNHead's default init_cfg
        feat_channels=512,
        anchor_generator=dict(
            type='AnchorGenerator',
            # seed: sub_sample 16, anchor_scales 8, 16, 32 x ratios 0.5, 1, 2 (h / w):
            # 9 anchors per location of 128, 256 and 512 px sides, ordered ratio-major
            strides=[16],
            scales=[8, 16, 32],
            ratios=[0.5, 1.0, 2.0],
            # seed: anchor centres at the middle of each 16 x 16 cell (8, 24, ..., 792);
            # mmdetection's default (0.0) puts them at the cell corners (0, 16, ..., 784)
            center_offset=0.5),
        # seed: offsets (dx, dy, dw, dh) of the anchor, not normalised
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[.0, .0, .0, .0],
            target_stds=[1.0, 1.0, 1.0, 1.0]),
        # seed: a 2-way softmax per anchor (object / background), cross-entropy
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        # seed: smooth L1 with beta 1 on positive anchors. The seed weighs it by 10 / (number of
        # positives); rcnn_det, as mmdetection, divides by the sampled anchors (256 per image),
        # which with weight 1 is the paper's balance (lambda 10 over N_reg ~ 2400 locations).
        loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0)),
    roi_head=dict(
        type='StandardRoIHead',
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor',
            # seed: max-pool each RoI to 7 x 7 on the stride-16 map (RoI pooling); box corners
            # are rounded to map cells, as the seed's integer slicing does
            roi_layer=dict(type='RoIPool', output_size=7),
            out_channels=512,
            featmap_strides=[16]),
        bbox_head=dict(
            type='Shared2FCBBoxHead',
            # seed: 512 x 7 x 7 = 25088 -> 4096 -> 4096 (the width of VGG16's fc6 and fc7),
            # then 21 class scores and 21 x 4 offsets. Shared2FCBBoxHead puts a ReLU after each
            # FC layer, as VGG's classifier does; the seed's Sequential has none between them.
            in_channels=512,
            fc_out_channels=4096,
            roi_feat_size=7,
            # seed: 20 VOC classes + background; COCO has 80
            num_classes=80,
            # seed: RoI offsets are not normalised either (mmdetection: stds 0.1, 0.1, 0.2, 0.2)
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[0., 0., 0., 0.],
                target_stds=[1.0, 1.0, 1.0, 1.0]),
            # seed: one box per class (21 * 4 outputs)
            reg_class_agnostic=False,
            # seed: softmax cross-entropy over the classes and background
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            # seed: smooth L1 (beta 1) on positive RoIs, weighted by roi_lambda = 10; rcnn_det
            # sums it over the 4 offsets and averages over the sampled RoIs, as mmdetection does
            loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=10.0))),
    train_cfg=dict(
        rpn=dict(
            assigner=dict(
                type='MaxIoUAssigner',
                # seed: IoU >= 0.7 positive, < 0.3 negative, the rest ignored
                pos_iou_thr=0.7,
                neg_iou_thr=0.3,
                # seed: every anchor whose IoU with a ground truth equals that ground truth's
                # best IoU is positive too (all ties), however small that IoU is
                min_pos_iou=0.0,
                match_low_quality=True,
                gt_max_assign_all=True,
                ignore_iof_thr=-1),
            # seed: 256 anchors per image, at most half of them positive
            sampler=dict(
                type='RandomSampler',
                num=256,
                pos_fraction=0.5,
                neg_pos_ub=-1,
                add_gt_as_proposals=False),
            # The seed ignores anchors that cross the image border (allowed_border=0); rcnn_det
            # supports only -1, every anchor takes part (all mmdetection configs do so).
            allowed_border=-1,
            pos_weight=-1,
            debug=False),
        # seed: proposals in training: top 12000 by objectness, boxes under 16 px dropped,
        # NMS at IoU 0.7, top 2000 kept. (min_bbox_size drops sides <= 16 px, as mmdetection
        # does; the seed keeps sides of exactly 16 px.)
        rpn_proposal=dict(
            nms_pre=12000,
            max_per_img=2000,
            nms=dict(type='nms', iou_threshold=0.7),
            min_bbox_size=16),
        rcnn=dict(
            assigner=dict(
                type='MaxIoUAssigner',
                # seed: RoIs with IoU >= 0.5 are positive, IoU in [0.0, 0.5) negative
                pos_iou_thr=0.5,
                neg_iou_thr=(0.0, 0.5),
                min_pos_iou=0.5,
                match_low_quality=False,
                ignore_iof_thr=-1),
            # seed: 128 RoIs per image, at most 25% (32) positive; the seed samples from the
            # proposals only, without adding the ground-truth boxes to them
            sampler=dict(
                type='RandomSampler',
                num=128,
                pos_fraction=0.25,
                neg_pos_ub=-1,
                add_gt_as_proposals=False),
            pos_weight=-1,
            debug=False)),
    test_cfg=dict(
        # seed: proposals in testing: top 6000, boxes under 16 px dropped, NMS 0.7, top 300
        rpn=dict(
            nms_pre=6000,
            max_per_img=300,
            nms=dict(type='nms', iou_threshold=0.7),
            min_bbox_size=16),
        # not in the seed (it stops at the losses): mmdetection's detection recipe
        rcnn=dict(
            score_thr=0.05,
            nms=dict(type='nms', iou_threshold=0.5),
            max_per_img=100)))
