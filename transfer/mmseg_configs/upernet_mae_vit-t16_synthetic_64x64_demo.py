# Demo scale of the UperNet-ViT (MAE/BEiT) protocol: the synthetic scenes (mast/data, ROOT/scenes/{images,labels})
# instead of ADE20K. Only scale differs from upernet_mae_vit-b16_ade20k_512x512_160k.py: a ViT-Tiny/16 width
# (192; the runner sets width and heads from the checkpoint, e.g. 384 for a DINO ViT-S/16, with the neck
# and heads to match), 64 px images (a 4x4 patch grid; every resize and crop divided by 8), batch 8,
# 200 iterations with 20 of warm-up, one validation at the end, no saved checkpoints, no data-loader
# workers, whole-image inference. Labels: 0 background, 1..8 shapes, 255 ignore.
_base_ = ['./_base_upernet_mae_vit_b16.py']

dataset_name = 'synthetic/scenes'
data_hint = 'generate it with: python -m mast.data.synthetic --out DIR --preset demo'
dataset_type = 'BaseSegDataset'
data_root = 'data/synthetic'
data_marker = 'COMPLETE'  # mast.data.synthetic writes it last; absent => incomplete
crop_size = (64, 64)
classes = ('background', 'circle', 'square', 'triangle', 'star', 'cross', 'ring', 'hexagon', 'heart')
palette = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
           [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230]]
num_classes = len(classes)
max_iters = 200
warmup_iters = 20
metainfo = dict(classes=classes, palette=palette)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(256, 64), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='Pad', size=crop_size),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 64), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        metainfo=metainfo,
        data_root=data_root,
        data_prefix=dict(img_path='scenes/images/train', seg_map_path='scenes/labels/train'),
        img_suffix='.png',
        seg_map_suffix='.png',
        reduce_zero_label=False,
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        metainfo=metainfo,
        data_root=data_root,
        data_prefix=dict(img_path='scenes/images/val', seg_map_path='scenes/labels/val'),
        img_suffix='.png',
        seg_map_suffix='.png',
        reduce_zero_label=False,
        pipeline=test_pipeline))
test_dataloader = val_dataloader

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size, embed_dims=192, num_heads=3, drop_path_rate=0.0),
    neck=dict(embed_dim=192),
    decode_head=dict(in_channels=[192, 192, 192, 192], channels=64, num_classes=num_classes),
    auxiliary_head=dict(in_channels=192, channels=32, num_classes=num_classes),
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
