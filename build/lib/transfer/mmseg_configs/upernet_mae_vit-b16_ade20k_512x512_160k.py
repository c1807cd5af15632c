# UperNet ViT-B/16 on ADE20K (150 classes), 512x512 crops, 160k iterations, global batch 16 (mmseg's
# 8x2): the MAE/BEiT protocol (PROTOCOLS.md; mmseg's mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py,
# _base_upernet_mae_vit_b16.py says what differs). data_root holds images/{training,validation} and
# annotations/{training,validation} (ADEChallengeData2016 as downloaded); labels 0 (other) are ignored.
_base_ = ['./_base_upernet_mae_vit_b16.py', './_base_seg_dataloaders.py']

dataset_name = 'ade20k'
data_hint = 'download ADEChallengeData2016.zip (http://sceneparsing.csail.mit.edu) and unzip it'
dataset_type = 'ADE20KDataset'
data_root = 'data/ade/ADEChallengeData2016'
crop_size = (512, 512)
global_batch = 16
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=2,  # per process: the runner sets global_batch / world size (and accumulation)
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))
val_dataloader = dict(
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation')))
test_dataloader = val_dataloader
