# Co-DINO R50 5-scale with large-scale jitter, 36 epochs (54.8 box AP in mmdetection's
# projects/CO-DETR): the 1x recipe with the lr step at epoch 30.
_base_ = ['./co_dino_5scale_r50_lsj_8xb2_1x_coco.py']

param_scheduler = [dict(milestones=[30])]
train_cfg = dict(max_epochs=36)
