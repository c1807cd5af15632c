# UperNet on a ViT-B/16 (mmseg's `MAE` backbone) with the MAE/BEiT fine-tuning recipe, as mmseg ships it in
# configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py (+ _base_/models/upernet_mae.py): blocks
# 3, 5, 7, 11 through Feature2Pyramid (x4, x2, x1, x0.5) into UPerHead, FCN auxiliary head on the third;
# AdamW lr 1e-4, wd 0.05, layer-wise lr decay 0.65 over 12 layers, 1500 iterations of linear warm-up,
# then linear (poly power 1) decay over 160k iterations; drop path 0.1. Differences: any ViT checkpoint
# (transfer/backbones/vit/load.py reads it; transfer/backbones/vit/mmseg.py converts it: relative position
# tables start at zero and LayerScale at one for a ViT without them, which leaves the ViT's function
# unchanged), and fp32 (mmseg's `fp16 = dict(loss_scale='dynamic')` is a no-op in mmseg 1.x once
# optim_wrapper is replaced, as that config does). The runner checks width, heads, patch and depth
# against the checkpoint and fills init_cfg.checkpoint. Self-contained: no `mmseg::` lookups;
# the runtime and the auxiliary head are _base_seg_common.py's.
_base_ = ['./_base_seg_common.py']

num_layers = 12
model = dict(
    backbone=dict(
        type='MAE',
        img_size=_base_.crop_size,
        patch_size=16,
        in_channels=3,
        embed_dims=768,
        num_layers=num_layers,
        num_heads=12,
        mlp_ratio=4,
        out_indices=(3, 5, 7, 11),
        attn_drop_rate=0.0,
        drop_path_rate=0.1,
        norm_cfg=dict(type='LN', eps=1e-6),
        act_cfg=dict(type='GELU'),
        norm_eval=False,
        init_values=1.0,
        init_cfg=dict(type='Pretrained', checkpoint=None)),
    neck=dict(type='Feature2Pyramid', embed_dim=768, rescales=[4, 2, 1, 0.5]),
    decode_head=dict(
        type='UPerHead',
        in_channels=[768, 768, 768, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=768,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=_base_.norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(in_channels=768, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=_base_.crop_size, stride=(341, 341)))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(num_layers=num_layers, layer_decay_rate=0.65),
    constructor='LayerDecayOptimizerConstructor')
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
default_hooks = dict(checkpoint=dict(interval=16000))
