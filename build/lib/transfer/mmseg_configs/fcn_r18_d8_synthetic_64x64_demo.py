# Demo scale of the FCN-D8 protocol: the synthetic scenes (_base_synthetic_scenes_64x64.py: 64 px
# images, every resize and crop size divided by 8, batch 8, no data-loader workers) instead of
# VOC12aug. Only scale differs from fcn_r50_d8_voc12aug_512x512_20k.py: ResNet-18 (the demo
# pretraining's backbone; its stages give 512/256 channels to the FCN and auxiliary heads, whose
# widths are 128/64 as in mmseg's own fcn_r18-d8 configs), the 64 px crop, a short schedule with one
# validation at the end, no saved checkpoints.
_base_ = ['./_base_fcn_r50_d8.py', './_base_synthetic_scenes_64x64.py']

crop_size = (64, 64)
max_iters = 200
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(depth=18),
    decode_head=dict(in_channels=512, channels=128, num_classes=_base_.num_classes),
    auxiliary_head=dict(in_channels=256, channels=64, num_classes=_base_.num_classes))
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=-1, save_last=False),
    visualization=dict(type='SegVisualizationHook', draw=False))
