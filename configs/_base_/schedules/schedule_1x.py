# training schedule for 1x (12 epochs, lr steps at epochs 8 and 11)
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# learning rate: linear warm-up over 500 iterations, then x0.1 at epochs 8 and 11
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]

# optimizer: lr 0.02 is for 16 images per iteration (8 GPUs x 2 images)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001))

# `python tools/train.py ... --auto-scale-lr` scales lr by (GPUs x batch_size) / base_batch_size
auto_scale_lr = dict(enable=False, base_batch_size=16)
