# DINO Swin-L 5-scale, 12 epochs on COCO 2017 (57.2 box AP in mmdetection's
# configs/dino/dino-5scale_swin-l_8xb2-12e_coco.py). Mixed precision as there:
# `python tools/train.py CONFIG --amp`.
_base_ = './dino-4scale_r50_8xb2-12e_coco.py'

# ImageNet-22k Swin-L of the original release: read from the torch hub cache
# (<torch.hub.get_dir()>/checkpoints/swin_large_patch4_window12_384_22k.pth), never downloaded;
# convert_weights=True maps the original layout to rcnn_det's (mmdetection's) names.
pretrained = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_large_patch4_window12_384_22k.pth'  # noqa
num_levels = 5
model = dict(
    num_feature_levels=num_levels,
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        pretrain_img_size=384,
        embed_dims=192,
        depths=[2, 2, 18, 2],
        num_heads=[6, 12, 24, 48],
        window_size=12,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.2,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=True,
        convert_weights=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768, 1536], num_outs=num_levels),
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(num_levels=num_levels))),
    decoder=dict(layer_cfg=dict(cross_attn_cfg=dict(num_levels=num_levels))))
