# co_deformable_detr_r18_shapes.py without its auxiliary heads: the same query head, data,
# schedule and seed, i.e. a plain two-stage Deformable DETR (with mixed query selection).
# docs/co_detr.md compares the two.
_base_ = './co_deformable_detr_r18_shapes.py'

model = dict(
    rpn_head=None,
    roi_head=[],
    bbox_head=[],
    train_cfg=[dict(assigner=dict(
        type='HungarianAssigner',
        match_costs=[
            dict(type='FocalLossCost', weight=2.0),
            dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
            dict(type='IoUCost', iou_mode='giou', weight=2.0)
        ]))],
    test_cfg=[dict(max_per_img=100)])
