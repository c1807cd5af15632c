# The synthetic scenes (mast/data, ROOT/scenes/{images,labels}) at demo scale, shared by both demo
# configs: 64 px images (every resize and crop of the 512 px protocols divided by 8), batch 8, no
# data-loader workers. Labels: 0 background, 1..8 shapes, 255 ignore. It holds the data only (a demo
# config inherits a model base beside it, and mmengine refuses a key two bases both set), so the crop
# size is the demo configs' `crop_size`, written here as `__crop` (a `__` name stays out of the config).
# data_root is the synthetic root (the folder holding COMPLETE and scenes/); --data-root overrides it.
_base_ = ['./_base_seg_dataloaders.py']

dataset_name = 'synthetic/scenes'
data_hint = 'generate it with: python -m mast.data.synthetic --out DIR --preset demo'
dataset_type = 'BaseSegDataset'
data_root = 'data/synthetic'
data_marker = 'COMPLETE'  # mast.data.synthetic writes it last; absent => incomplete
__crop = (64, 64)
classes = ('background', 'circle', 'square', 'triangle', 'star', 'cross', 'ring', 'hexagon', 'heart')
palette = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
           [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230]]
num_classes = len(classes)
metainfo = dict(classes=classes, palette=palette)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(256, 64), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=__crop, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='Pad', size=__crop),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 64), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
__scenes = dict(type=dataset_type, metainfo=metainfo, data_root=data_root, img_suffix='.png',
                seg_map_suffix='.png', reduce_zero_label=False)
__loader = dict(batch_size=8, num_workers=0, persistent_workers=False)
train_dataloader = dict(__loader, dataset=dict(
    __scenes, data_prefix=dict(img_path='scenes/images/train', seg_map_path='scenes/labels/train'),
    pipeline=train_pipeline))
val_dataloader = dict(__loader, dataset=dict(
    __scenes, data_prefix=dict(img_path='scenes/images/val', seg_map_path='scenes/labels/val'),
    pipeline=test_pipeline))
test_dataloader = val_dataloader
