# The demo twin of ImageNet linear evaluation (resnet50_linear_imagenet_vicreg.py, VICReg's protocol: frozen
# backbone in eval mode, linear head, SGD, cosine) on the synthetic ImageNet-layout set (mast/data/imagenet_like.py:
# 8 color classes, 64 px, 640 train / 160 val images in the demo preset) at CPU size: 56 px crops from 64 px
# images, global batch 32, few epochs, no data workers (the same block as resnet_semisup_1pct_imagenet_like_demo.py;
# mmengine refuses two bases that set one key). The runner sets the ResNet depth from the checkpoint (the demo's
# is a ResNet-18). A CPU-minute pipeline of the same engine, never a paper number: the record's scale is "demo".
_base_ = ['./resnet50_linear_imagenet_vicreg.py']
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
