# co_dino_r18_shapes.py without its auxiliary heads: the same DINO query head, data, schedule
# and seed. docs/co_detr.md compares the two.
_base_ = './co_dino_r18_shapes.py'

model = dict(
    rpn_head=None,
    roi_head=[],
    bbox_head=[],
    query_head=dict(transformer=dict(num_co_heads=0)),
    train_cfg=[dict(assigner=dict(
        type='HungarianAssigner',
        match_costs=[
            dict(type='FocalLossCost', weight=2.0),
            dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
            dict(type='IoUCost', iou_mode='giou', weight=2.0)
        ]))],
    test_cfg=[dict(max_per_img=100, nms=dict(type='soft_nms', iou_threshold=0.8))])
