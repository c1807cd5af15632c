# FCN R50-D8 shared by every segmentation config of this project (PROTOCOLS.md "Semantic
# segmentation"). It differs from mmseg's own `_base_/models/fcn_r50-d8.py` in the backbone only:
# mmseg `ResNet` with style='pytorch' and no deep stem (the torchvision layout an SSL checkpoint
# has), never `ResNetV1c`, whose deep stem would stay random. `contract_dilation=True` makes the
# first block of a dilated stage use half the dilation, which is exactly what torchvision's
# `replace_stride_with_dilation` does. transfer/segmentation/runner.py fills `init_cfg.checkpoint`, and
# sets `depth` from the checkpoint (any torchvision depth) with the heads' `in_channels` to match.
# Self-contained: no `mmseg::` lookups; the runtime and the auxiliary head are _base_seg_common.py's.
_base_ = ['./_base_seg_common.py']

model = dict(
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        strides=(1, 2, 1, 1),
        dilations=(1, 1, 2, 4),
        style='pytorch',
        deep_stem=False,
        avg_down=False,
        contract_dilation=True,
        norm_cfg=_base_.norm_cfg,
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint=None, prefix='backbone.')),
    decode_head=dict(
        type='FCNHead',
        in_channels=2048,
        in_index=3,
        channels=512,
        num_convs=2,
        concat_input=True,
        dropout_ratio=0.1,
        num_classes=21,
        norm_cfg=_base_.norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(in_channels=1024, num_classes=21),
    test_cfg=dict(mode='whole'))

# Schedule: SGD lr 0.01, momentum 0.9, wd 5e-4; poly decay (power 0.9) to 1e-4.
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=20000, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=20000, val_interval=2000)
