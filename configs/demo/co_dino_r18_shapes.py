# Co-DINO, ResNet-18 from random initialisation, on rcnn_det's embedded shapes data.
# `python tools/train.py configs/demo/co_dino_r18_shapes.py` generates the data (first run only),
# trains, evaluates (COCO bbox mAP on the val split), saves the checkpoint and draws predictions
# into work_dirs/co_dino_r18_shapes/predictions.png, within 15 minutes on a 2-core CPU.
#
# mmdetection's co_dino_5scale_r50 recipe (a DINO query head with QualityFocalLoss and soft-NMS,
# a Faster R-CNN and an ATSS auxiliary head whose positives become extra decoder queries) made
# small like the Co-Deformable-DETR demo: 4 levels at 224 px, 128-wide transformer with 3 + 3
# layers, FFN 512, 50 matching and at most 50 denoising queries, RoI head with 256-d FCs and 128
# sampled RoIs per image. The same model without its auxiliary heads is
# co_dino_r18_shapes_no_aux.py (docs/co_detr.md compares the two).
_base_ = './co_deformable_detr_r18_shapes.py'

classes = ('circle', 'square', 'triangle', 'star')
num_classes = len(classes)
embed_dims = 128
num_dec_layer = 3
max_iters = 500

model = dict(
    query_head=dict(
        _delete_=True,
        type='CoDINOHead',
        num_query=50,
        num_classes=num_classes,
        in_channels=512,
        as_two_stage=True,
        max_pos_coords=100,
        dn_cfg=dict(
            label_noise_scale=0.5,
            box_noise_scale=1.0,
            group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=50)),
        transformer=dict(
            type='CoDinoTransformer',
            with_coord_feat=False,
            num_co_heads=2,
            num_feature_levels=4,
            encoder=dict(
                type='DetrTransformerEncoder',
                num_layers=3,
                transformerlayers=dict(
                    type='BaseTransformerLayer',
                    attn_cfgs=dict(
                        type='MultiScaleDeformableAttention', embed_dims=embed_dims,
                        num_levels=4, dropout=0.0),
                    feedforward_channels=512,
                    ffn_dropout=0.0,
                    operation_order=('self_attn', 'norm', 'ffn', 'norm'))),
            decoder=dict(
                type='DinoTransformerDecoder',
                num_layers=num_dec_layer,
                return_intermediate=True,
                transformerlayers=dict(
                    type='DetrTransformerDecoderLayer',
                    attn_cfgs=[
                        dict(type='MultiheadAttention', embed_dims=embed_dims, num_heads=8,
                             dropout=0.0),
                        dict(type='MultiScaleDeformableAttention', embed_dims=embed_dims,
                             num_levels=4, dropout=0.0)
                    ],
                    feedforward_channels=512,
                    ffn_dropout=0.0,
                    operation_order=('self_attn', 'norm', 'cross_attn', 'norm', 'ffn',
                                     'norm')))),
        positional_encoding=dict(
            type='SinePositionalEncoding', num_feats=embed_dims // 2, temperature=20,
            normalize=True),
        loss_cls=dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    test_cfg=[
        dict(max_per_img=100, nms=dict(type='soft_nms', iou_threshold=0.8)),
        dict(rpn=dict(nms_pre=1000, max_per_img=300, nms=dict(type='nms', iou_threshold=0.7),
                      min_bbox_size=0),
             rcnn=dict(score_thr=0.0, nms=dict(type='nms', iou_threshold=0.5),
                       max_per_img=100)),
        dict(nms_pre=1000, min_bbox_size=0, score_thr=0.0,
             nms=dict(type='nms', iou_threshold=0.6), max_per_img=100),
    ])

optim_wrapper = dict(paramwise_cfg=dict(
    _delete_=True, custom_keys={'sampling_offsets': dict(lr_mult=0.1)}))
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters, eta_min=2e-6)
]
