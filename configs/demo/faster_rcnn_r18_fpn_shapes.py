# Faster R-CNN R18-FPN trained from random initialisation on rcnn_det's embedded shapes data.
# `python tools/train.py configs/demo/faster_rcnn_r18_fpn_shapes.py` generates the data (first
# run only), trains, evaluates (COCO bbox mAP on the val split), saves the checkpoint and draws
# predictions on a few val images into work_dirs/faster_rcnn_r18_fpn_shapes/predictions.png,
# all within 10 minutes on a 2-core CPU.
#
# The parts are those of the COCO config; the recipe is chosen for a CPU budget of ~800
# iterations of 4 small images, from scratch:
#   - inputs at most 224 px, a 4-level FPN (strides 4-32) of 64 channels, anchors of 16-128 px
#     (scale 4) for objects of 28-96 px (COCO: 800x1333 px, 5 levels of 256 channels, scale 8).
#     The stride-4 level's 3x3 FPN and RPN convs cost as much as the whole backbone at 128
#     channels; at 64 they cost a quarter, and the shapes need no more (measured: 0.73 mAP at
#     64 channels in 5 minutes vs 0.69 at 128 in 7.5 minutes);
#   - the RoI head samples 64 RoIs per image, half of them positive (COCO: 512, a quarter), has
#     256-wide FC layers (COCO: 1024) and pools with one bilinear sample per bin: at this size
#     the COCO head's first FC layer and RoIAlign's backward pass would cost more than the
#     backbone. RoIs map to FPN levels from 28 px instead of 56 px, as the objects are small;
#   - no pretrained weights can be downloaded, so every BatchNorm trains (norm_eval=False, no
#     frozen stages) and zero-initialised residual branches start each block as the identity;
#   - AdamW at 1e-3 with a 50-iteration warm-up, cosine decay and gradient clipping: from
#     scratch it learns several times faster per iteration than SGD (measured: 0.51 vs 0.25
#     bbox mAP after 600 iterations); lr 2e-3 was worse (0.32).
_base_ = [
    '../_base_/models/faster_rcnn_r50_fpn.py',
    '../_base_/datasets/shapes_detection.py',
    '../_base_/schedules/shapes_demo.py',
]

model = dict(
    backbone=dict(
        depth=18,
        frozen_stages=-1,
        norm_eval=False,
        zero_init_residual=True,
        init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64, num_outs=4),
    rpn_head=dict(
        in_channels=64,
        feat_channels=64,
        anchor_generator=dict(scales=[4], strides=[4, 8, 16, 32])),
    roi_head=dict(
        bbox_roi_extractor=dict(
            roi_layer=dict(sampling_ratio=1), out_channels=64, finest_scale=28),
        # num_classes: circle, square, triangle, star (_base_/datasets/shapes_detection.py)
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=4)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=64, pos_fraction=0.5))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100)))
