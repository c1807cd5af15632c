# The demo twin of ImageNet semi-supervised fine-tuning on 1 % of the labels (resnet50_semisup_1pct_imagenet_vicreg.py:
# the whole network trains, two learning rates, weight decay 0) on the synthetic ImageNet-layout set at CPU size
# (the same block as resnet_linear_imagenet_like_demo.py), training on the twin's generated "1 %" list
# (imagenet_like/1percent.txt: 10 % of each class, mast/data/imagenet_like.py) instead of SimCLR's shipped one;
# --subset-file overrides it. Never a paper number: the record's scale is "demo".
_base_ = ['./resnet50_semisup_1pct_imagenet_vicreg.py']
dataset_name = 'synthetic/imagenet_like'
data_hint = 'the synthetic twin: python -m mast.data.synthetic writes ROOT/imagenet_like/{train,val}/<synset>/'
data_root = 'data/synthetic/imagenet_like'
check_sizes = False  # not ILSVRC-2012's sizes
global_batch = 32
epochs = 8
train_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow', color_type='color_ignore_orientation'),
    dict(type='RandomResizedCrop', scale=56, crop_ratio_range=(0.08, 1.0), aspect_ratio_range=(3. / 4., 4. / 3.),
         backend='pillow', interpolation='bilinear'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow', color_type='color_ignore_orientation'),
    dict(type='ResizeEdge', scale=64, edge='short', backend='pillow', interpolation='bilinear'),
    dict(type='CenterCrop', crop_size=56),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=global_batch, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=global_batch, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
param_scheduler = [dict(type='CosineAnnealingLR', T_max=epochs, eta_min=0.0, by_epoch=True, begin=0, end=epochs)]
train_cfg = dict(max_epochs=epochs)
default_hooks = dict(logger=dict(interval=10))
dataset_name = 'synthetic/imagenet_like_1pct'
subset = None  # not SimCLR's list: the twin's own
subset_file = '1percent.txt'  # relative to data_root
