# torchvision's maskrcnn_resnet50_fpn, exactly: fasterrcnn_resnet50_fpn (see that config) plus
# its mask branch: MultiScaleRoIAlign 14x14 (sampling_ratio 2, no half-pixel offset), four 3x3
# convs, a 2x2 transposed conv, 1x1 logits; soft RoIAlign mask targets; masks pasted into the
# image torchvision's way and thresholded at 0.5.
_base_ = './fasterrcnn_resnet50_fpn_coco.py'

model = dict(
    type='MaskRCNN',
    data_preprocessor=dict(pad_mask=True),
    roi_head=dict(
        mask_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=2, aligned=False),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32],
            finest_scale=56),
        # MaskRCNNHeads((256, 256, 256, 256)) + MaskRCNNPredictor: the same layers as
        # FCNMaskHead's convs / upsample (deconv) / conv_logits, background channel dropped
        mask_head=dict(
            type='FCNMaskHead',
            num_convs=4,
            in_channels=256,
            conv_out_channels=256,
            num_classes=80,
            loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))),
    # project_masks_on_boxes: RoIAlign of the gt mask without the half-pixel offset, the
    # fractions kept as soft targets of the BCE loss
    train_cfg=dict(rcnn=dict(mask_size=28, soft_mask_target=True, mask_target_aligned=False)),
    test_cfg=dict(rcnn=dict(mask_thr_binary=0.5, mask_paste='torchvision')))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='TorchvisionResize', min_size=800, max_size=1333),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TorchvisionResize', min_size=800, max_size=1333),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
