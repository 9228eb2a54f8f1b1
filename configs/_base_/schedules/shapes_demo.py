# The CPU demos' schedule: 800 iterations of AdamW from scratch with warm-up, cosine decay and
# gradient clipping; one evaluation and one checkpoint at the end, predictions drawn, on top of
# the default runtime.
_base_ = '../default_runtime.py'

max_iters = 800

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    type='OptimWrapper',
    # fused: one kernel for all parameters; the per-tensor loop costs ~0.1 s per step on a CPU
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4, fused=True),
    clip_grad=dict(max_norm=10, norm_type=2))
# lr 1e-3 is for 4 images per iteration: `--auto-scale-lr` rescales it for other totals
auto_scale_lr = dict(enable=False, base_batch_size=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters, eta_min=2e-5)
]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=200, max_keep_ckpts=1),
    visualization=dict(
        type='DetVisualizationHook', draw=True, interval=1, grid_images=6, score_thr=0.5))
log_processor = dict(type='LogProcessor', window_size=20, by_epoch=False)
randomness = dict(seed=0)
