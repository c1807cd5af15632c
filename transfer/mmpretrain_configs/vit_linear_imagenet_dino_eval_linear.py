# ImageNet linear evaluation of a frozen ViT, DINO's eval_linear.py protocol (facebookresearch/dino @
# 7c446df5b9f45747937fb0d72314eb9f7b66930a; PROTOCOLS.md "ViT linear"; cited key by key in
# tests/transfer/classification/test_vit_linear.py). The ViT frozen in eval mode (eval_linear.py:55, features
# under no_grad :164), pooled as DINO's README says by width (vit_pooling: ViT-S and narrower the class tokens
# of the last 4 blocks, ViT-B and wider class token + patch average of the last block; transfer/classification/vit.py),
# a linear layer N(0, 0.01) / bias 0 (:243-244), SGD momentum 0.9, weight decay 0, lr 0.001 x 1024 / 256
# (:105: --lr 0.001 at --batch_size_per_gpu 128 x 8 GPUs, README.md:263), cosine to 0 over 100 epochs stepped
# per epoch (:109, :127), validation every epoch (--val_freq 1). Data and normalisation as the ResNet base;
# the val resize is bicubic here (Resize(256, interpolation=3), :66), the train crop bilinear (:86).
_base_ = ['./_base_imagenet_vicreg.py']
protocol = 'linear'
protocol_source = 'facebookresearch/dino eval_linear.py @ 7c446df'
vit_pooling = 'dino_eval_linear'
global_batch = 1024
epochs = 100
base_lr = 0.001  # --lr, "specified here for a reference batch size of 256"
lr = base_lr * global_batch / 256
weight_decay = 0.0
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow', color_type='color_ignore_orientation'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
# FrozenTimmViT: the checkpoint's ViT (spec, pooling and img_size set by the runner from the checkpoint and the crop)
model = dict(
    backbone=dict(_delete_=True, type='FrozenTimmViT', spec=None, img_size=224, pool=None, last_blocks=None),
    neck=None,
    head=dict(type='LogitLinearClsHead', in_channels=None,
              init_cfg=dict(type='Normal', layer='Linear', mean=0.0, std=0.01, bias=0.0)))
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=False,
                                    dampening=0))
param_scheduler = [dict(type='CosineAnnealingLR', T_max=epochs, eta_min=0.0, by_epoch=True, begin=0, end=epochs)]
train_cfg = dict(by_epoch=True, max_epochs=epochs, val_interval=1)
