# FCN R50-D8 on Cityscapes (fine, 19 classes), 769x769 crops, 40k iterations, sliding-window test
# (PROTOCOLS.md; mmseg's fcn_r50-d8_4xb2-40k_cityscapes-769x769 with the torchvision-layout
# backbone). data_root holds leftImg8bit/{train,val} and gtFine/{train,val} with the
# *_gtFine_labelTrainIds.png maps that mmseg's cityscapes.py converter writes.
_base_ = ['./_base_fcn_r50_d8.py', './_base_seg_dataloaders.py']

dataset_name = 'cityscapes'
data_hint = 'the *_gtFine_labelTrainIds.png maps come from mmseg\'s tools/dataset_converters/cityscapes.py'
dataset_type = 'CityscapesDataset'
data_root = 'data/cityscapes/'
crop_size = (769, 769)
# The protocol's global batch (mmseg's 4x2), whatever the number of processes: the runner sets
# the per-process batch and gradient accumulation from it (transfer/segmentation/batch.py).
global_batch = 8
num_classes = 19
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(2049, 1025), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2049, 1025), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=2,  # per process: the runner sets global_batch / world size (and accumulation)
    num_workers=2,
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline,
                 data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train')))
val_dataloader = dict(
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline,
                 data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val')))
test_dataloader = val_dataloader

model = dict(
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(num_classes=num_classes, align_corners=True),
    auxiliary_head=dict(num_classes=num_classes, align_corners=True),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(513, 513)))
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=40000, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40000, val_interval=4000)
default_hooks = dict(checkpoint=dict(interval=4000))
