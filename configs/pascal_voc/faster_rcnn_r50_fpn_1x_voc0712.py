# Faster R-CNN R50-FPN on Pascal VOC 07+12, mmdetection's faster-rcnn_r50_fpn_1x_voc0712.py:
# 20 classes, 4 epochs of the 3x-repeated data (12 passes over it), lr 0.01 for 16 images
# stepped at epoch 3. Evaluated with VOC2007's 11-point mAP@0.5 on VOC2007 test.
_base_ = [
    '../_base_/models/faster_rcnn_r50_fpn.py', '../_base_/datasets/voc0712.py',
    '../_base_/default_runtime.py'
]
model = dict(roi_head=dict(bbox_head=dict(num_classes=20)))

max_epochs = 4
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[3], gamma=0.1)
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001))
# the learning rate above is for 8 GPUs x 2 images (--auto-scale-lr scales it to the batch)
auto_scale_lr = dict(enable=False, base_batch_size=16)
