# Demo scale of the FCN-D8 protocol: the synthetic scenes (mast/data, ROOT/scenes/{images,labels})
# instead of VOC12aug. Only scale differs from fcn_r50_d8_voc12aug_512x512_20k.py: ResNet-18 (the
# demo pretraining's backbone; its stages give 512/256 channels to the FCN and auxiliary heads, whose
# widths are 128/64 as in mmseg's own fcn_r18-d8 configs), 64 px images (every resize and crop size
# divided by 8), batch 8, a short schedule with one validation at the end, no saved checkpoints, no
# data-loader workers. Labels: 0 background, 1..8 shapes, 255 ignore.
# data_root is the synthetic root (the folder holding COMPLETE and scenes/); --data-root overrides it.
_base_ = ['./_base_fcn_r50_d8.py']

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
    backbone=dict(depth=18),
    decode_head=dict(in_channels=512, channels=128, num_classes=num_classes),
    auxiliary_head=dict(in_channels=256, channels=64, num_classes=num_classes))
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=-1, save_last=False),
    visualization=dict(type='SegVisualizationHook', draw=False))
