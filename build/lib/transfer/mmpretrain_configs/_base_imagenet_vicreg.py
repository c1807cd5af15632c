# ImageNet-1k classification with a torchvision-layout ResNet-50, VICReg's evaluate.py protocol
# (PROTOCOLS.md "ImageNet linear and semi-supervised"; facebookresearch/vicreg evaluate.py, cited line by
# line in tests/transfer/classification/test_classification.py). What the linear and semi-supervised configs share: data, model,
# SGD, cosine, evaluation, runtime. Self-contained (no `mmpretrain::` lookups). The runner fills in at run
# time what depends on the disk: data_root, the annotation files and the class names
# (transfer/classification/imagenet.py: ImageFolder's class order), and the backbone's weights.
dataset_name = 'imagenet'
data_hint = 'ImageNet-1k as train/<synset>/ + val/<synset>/, or ILSVRC/Data/CLS-LOC/{train,val} + LOC_val_solution.csv'
data_root = 'data/imagenet'
subset = None  # '1percent' / '10percent': SimCLR's lists shipped in transfer/imagenet_subsets/
num_classes = 1000
# The protocol's global batch (evaluate.py --batch-size 256, split over the processes); the runner sets the
# per-process batch and gradient accumulation from it (transfer/segmentation/batch.py's plan).
global_batch = 256
epochs = 100
lr_head = 0.02  # VICReg README's linear command (--lr-head 0.02; the argparse default is 0.3)
lr_backbone = 0.0  # frozen
weight_decay = 1e-6
momentum = 0.9

# mmcv's LoadImageFromFile gives BGR; to_rgb=True makes it RGB before ImageNet's (RGB) mean/std, as
# torchvision's ToTensor + Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]) (x 255).
data_preprocessor = dict(
    type='ClsDataPreprocessor',
    num_classes=num_classes,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)
# PIL decoding and PIL bilinear resizing, as torchvision's ImageFolder + transforms do; ImageFolder's loader
# (Image.convert('RGB')) ignores a JPEG's EXIF orientation, mmcv's default 'color' would apply it.
train_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow', color_type='color_ignore_orientation'),
    dict(type='RandomResizedCrop', scale=224, crop_ratio_range=(0.08, 1.0), aspect_ratio_range=(3. / 4., 4. / 3.),
         backend='pillow', interpolation='bilinear'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow', color_type='color_ignore_orientation'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow', interpolation='bilinear'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=256,  # per process: the runner sets global_batch / world size (and accumulation)
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='CustomDataset', data_root=data_root, ann_file='', data_prefix='', with_label=True,
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=256,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CustomDataset', data_root=data_root, ann_file='', data_prefix='', with_label=True,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
# top-1/top-5 ranked on the logits as evaluate.py's accuracy(), per-image hits kept (engine.py)
val_evaluator = dict(type='PerImageAccuracy', topk=(1, 5))
test_evaluator = val_evaluator

# evaluate.py: resnet50 without its fc (avgpool + flatten: 2048 features), nn.Linear(2048, 1000) with
# weight ~ N(0, 0.01), bias 0, cross-entropy. style='pytorch' and no deep stem: torchvision's network.
model = dict(
    type='ImageClassifier',
    data_preprocessor=data_preprocessor,
    backbone=dict(type='ResNet', depth=50, num_stages=4, out_indices=(3,), style='pytorch',
                  frozen_stages=4, norm_eval=True),
    neck=dict(type='GlobalAveragePooling'),
    # LinearClsHead whose predictions also carry the logits (evaluate.py's accuracy ranks them; engine.py)
    head=dict(type='LogitLinearClsHead', num_classes=num_classes, in_channels=2048,
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, 5),
              init_cfg=dict(type='Normal', layer='Linear', mean=0.0, std=0.01, bias=0.0)))

# SGD(param_groups, 0, momentum=0.9, weight_decay=wd); CosineAnnealingLR(optimizer, epochs) stepped per epoch
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=lr_head, momentum=momentum, weight_decay=weight_decay,
                                    nesterov=False, dampening=0))
param_scheduler = [dict(type='CosineAnnealingLR', T_max=epochs, eta_min=0.0, by_epoch=True, begin=0, end=epochs)]
train_cfg = dict(by_epoch=True, max_epochs=epochs, val_interval=1)  # evaluate.py validates after every epoch
val_cfg = dict()
test_cfg = dict()

default_scope = 'mmpretrain'
env_cfg = dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # every epoch, as evaluate.py's checkpoint.pth: a job the cluster ends resumes from the last epoch
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False))
