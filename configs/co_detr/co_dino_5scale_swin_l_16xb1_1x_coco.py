# Co-DINO Swin-L 5-scale, 12 epochs on COCO 2017, 16 GPUs x 1 image (58.9 box AP in
# mmdetection's projects/CO-DETR/configs/codino/co_dino_5scale_swin_l_16xb1_1x_coco.py).
_base_ = ['./co_dino_5scale_r50_8xb2_1x_coco.py']

# ImageNet-22k Swin-L of the original release: read from the torch hub cache
# (<torch.hub.get_dir()>/checkpoints/swin_large_patch4_window12_384_22k.pth), never downloaded;
# convert_weights=True maps the original layout to rcnn_det's (mmdetection's) names.
pretrained = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_large_patch4_window12_384_22k.pth'  # noqa

model = dict(
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
        drop_path_rate=0.3,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        convert_weights=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768, 1536]),
    query_head=dict(transformer=dict(encoder=dict(with_cp=6))))

train_dataloader = dict(batch_size=1, num_workers=1)
