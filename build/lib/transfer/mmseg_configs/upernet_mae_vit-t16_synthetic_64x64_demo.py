# Demo scale of the UperNet-ViT (MAE/BEiT) protocol: the synthetic scenes (_base_synthetic_scenes_64x64.py:
# 64 px images, a 4x4 patch grid, every resize and crop divided by 8, batch 8, no data-loader workers)
# instead of ADE20K. Only scale differs from upernet_mae_vit-b16_ade20k_512x512_160k.py: a ViT-Tiny/16
# width (192; the runner sets width and heads from the checkpoint, e.g. 384 for a DINO ViT-S/16, with
# the neck and heads to match), 200 iterations with 20 of warm-up, one validation at the end, no saved
# checkpoints, whole-image inference.
_base_ = ['./_base_upernet_mae_vit_b16.py', './_base_synthetic_scenes_64x64.py']

crop_size = (64, 64)
max_iters = 200
warmup_iters = 20
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size, embed_dims=192, num_heads=3, drop_path_rate=0.0),
    neck=dict(embed_dim=192),
    decode_head=dict(in_channels=[192, 192, 192, 192], channels=64, num_classes=_base_.num_classes),
    auxiliary_head=dict(in_channels=192, channels=32, num_classes=_base_.num_classes),
    test_cfg=dict(_delete_=True, mode='whole'))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=warmup_iters, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=-1, save_last=False),
    visualization=dict(type='SegVisualizationHook', draw=False))
