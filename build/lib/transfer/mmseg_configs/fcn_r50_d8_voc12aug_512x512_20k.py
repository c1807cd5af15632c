# FCN R50-D8 on PASCAL VOC 2012 + SBD augmented set ("VOC12aug"), 512x512 crops, 20k iterations
# (PROTOCOLS.md; mmseg's fcn_r50-d8_4xb4-20k_voc12aug-512x512 with the torchvision-layout backbone).
# data_root holds JPEGImages/, SegmentationClass/, SegmentationClassAug/ and
# ImageSets/Segmentation/{train,aug,val}.txt (mmseg's voc_aug.py converter makes the Aug parts).
_base_ = ['./_base_fcn_r50_d8.py', './_base_seg_dataloaders.py']

dataset_name = 'voc12aug'
data_hint = 'SegmentationClassAug/ and aug.txt come from mmseg\'s tools/dataset_converters/voc_aug.py'
dataset_type = 'PascalVOCDataset'
data_root = 'data/VOCdevkit/VOC2012'
crop_size = (512, 512)
# The protocol's global batch (mmseg's 4x4), whatever the number of processes: the runner sets
# the per-process batch and gradient accumulation from it (transfer/segmentation/batch.py).
global_batch = 16
num_classes = 21
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='Pad', size=crop_size),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
dataset_train = dict(
    type=dataset_type,
    data_root=data_root,
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
    ann_file='ImageSets/Segmentation/train.txt',
    pipeline=train_pipeline)
dataset_aug = dict(dataset_train, data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
                   ann_file='ImageSets/Segmentation/aug.txt')
train_dataloader = dict(
    batch_size=4,  # per process: the runner sets global_batch / world size (and accumulation)
    dataset=dict(type='ConcatDataset', datasets=[dataset_train, dataset_aug]))
val_dataloader = dict(dataset=dict(dataset_train, ann_file='ImageSets/Segmentation/val.txt', pipeline=test_pipeline))
test_dataloader = val_dataloader

model = dict(
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(num_classes=num_classes),
    auxiliary_head=dict(num_classes=num_classes))
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=20000, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=20000, val_interval=2000)
default_hooks = dict(checkpoint=dict(interval=2000))
