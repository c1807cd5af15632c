# ImageNet linear probing of a frozen ViT, MAE's main_linprobe.py protocol (facebookresearch/mae @
# efb2a8062c206524e35e47d04501ed4f544c0ae8; PROTOCOLS.md "ViT linear"; cited key by key in
# tests/transfer/classification/test_vit_linear.py). FINETUNE.md:139-150's command: --cls_token (the class token
# after the final norm), --epochs 90, --blr 0.1, --weight_decay 0.0, batch 512 x 32 GPUs = 16384, so
# lr = 0.1 x 16384 / 256 = 6.4 (main_linprobe.py:240). The head is BatchNorm1d(affine=False, eps=1e-6) + Linear
# (:222) with trunc_normal(std 0.01) (:218) and bias 0; LARS on the head's parameters (:252, util/lars.py);
# 10 warmup epochs then half-cycle cosine to min_lr 0, set every iteration (engine_finetune.py:46-47,
# util/lr_sched.py); cross-entropy (:256); fp16 autocast with a dynamic loss scale (engine_finetune.py:55,
# NativeScaler); drop_last on the training loader (:178); bicubic crop and resize (:133, :138), the crop's
# parameters drawn once, TF-style (util/crop.py). Validation after every epoch (:285).
_base_ = ['./_base_imagenet_vicreg.py']
protocol = 'linear'
protocol_source = 'facebookresearch/mae main_linprobe.py @ efb2a80'
vit_pooling = ('cls', 1)  # --cls_token: global_pool False, models_vit.py:50-51 norm(x)[:, 0]
global_batch = 16384
epochs = 90
warmup_epochs = 10
blr = 0.1
lr = blr * global_batch / 256
weight_decay = 0.0
train_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow', color_type='color_ignore_orientation'),
    dict(type='MaeRandomResizedCrop', scale=224, crop_ratio_range=(0.08, 1.0), aspect_ratio_range=(3. / 4., 4. / 3.),
         backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow', color_type='color_ignore_orientation'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
train_dataloader = dict(drop_last=True, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
model = dict(
    backbone=dict(_delete_=True, type='FrozenTimmViT', spec=None, img_size=224, pool=None, last_blocks=None),
    neck=None,
    head=dict(_delete_=True, type='MaeLinprobeHead', num_classes=1000, in_channels=None, bn_eps=1e-6,
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, 5),
              init_cfg=dict(type='TruncNormal', layer='Linear', mean=0.0, std=0.01, a=-2.0, b=2.0, bias=0.0)))
optim_wrapper = dict(_delete_=True, type='AmpOptimWrapper', dtype='float16', loss_scale='dynamic',
                     optimizer=dict(type='MaeLARS', lr=lr, weight_decay=weight_decay, momentum=0.9,
                                    trust_coefficient=0.001))
param_scheduler = [dict(type='MaeWarmupCosineLR', warmup=warmup_epochs, total=epochs, min_lr=0.0, by_epoch=True,
                        begin=0, end=epochs, convert_to_iter_based=True)]
train_cfg = dict(by_epoch=True, max_epochs=epochs, val_interval=1)
