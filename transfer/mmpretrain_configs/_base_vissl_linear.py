# Linear classification transfer with a frozen torchvision-layout ResNet-50, VISSL's benchmark protocol
# (facebookresearch/vissl @ 09270ed25a6c2cf71263d955b64cbe076d34ac45,
# configs/config/benchmark/linear_image_classification/{places205,inaturalist18}/eval_resnet_8gpu_transfer_*_linear.yaml;
# cited key by key in tests/transfer/classification/test_vissl_linear.py). What the Places205 and iNat18 configs share:
# the trunk frozen in eval mode, VISSL's res5 eval_mlp head (AvgPool2d 6/1 -> BatchNorm2d -> flatten -> Linear),
# SGD nesterov, weight decay 5e-4 (not on the head's BatchNorm), lr 0.01 at batch 256 (32 x 8 GPUs),
# multistep x0.1, the ImageNet transforms, top-1/top-5 on the official val split after every epoch.
# Data: transfer.vissl_datasets (the official layouts), written to annotation files by transfer/classification/data.py.
# Not expressible exactly here: VISSL trains one head per layer (conv1, res2..res5[, res5avg]) side by side and
# reports each; this config trains the res5 head alone (frozen trunk: the heads share no parameter, so the
# res5 head's training is the same), and its BatchNorm sees one process's batch (VISSL: SyncBN over 8 GPUs).
_base_ = ['./_base_imagenet_vicreg.py']
protocol = 'linear'
data_hint = 'set by the dataset config'
smoke_side = 224  # --smoke keeps 224 px crops: res5 is 7x7, the 6x6 pool gives the 2x2 grid the head expects
global_batch = 256  # BATCHSIZE_PER_REPLICA 32 x NUM_PROC_PER_NODE 8
lr = 0.01  # auto_lr_scaling base_value 0.01 at base_lr_batch_size 256: 0.01 at batch 256
weight_decay = 5e-4
momentum = 0.9
model = dict(
    backbone=dict(out_indices=(3,), frozen_stages=4, norm_eval=True),  # FREEZE_TRUNK_ONLY + EVAL_MODE_ON
    neck=None,
    # eval_mlp {"in_channels": 2048, "dims": [8192, C]} on res5 pooled by AvgPool2d([6, 6], 1, 0): the
    # BatchNorm2d (eps 1e-5, momentum 0.1: VISSL's HEAD.BATCHNORM_EPS/MOMENTUM defaults) trains; the Linear
    # keeps PyTorch's default init (vissl/models/heads/mlp.py: "we use the default ... initialization")
    head=dict(_delete_=True, type='VisslEvalHead', num_classes=1000, in_channels=2048, pool=(6, 1, 0), grid=(2, 2),
              bn_eps=1e-5, bn_momentum=0.1, loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, 5),
              init_cfg=None))
# regularize_bn: False (no decay on the head's BatchNorm), regularize_bias: True (the Linear's bias decays)
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True,
                                    dampening=0),
                     paramwise_cfg=dict(norm_decay_mult=0.0))
sync_bn = 'torch'  # SYNC_BN_CONFIG.CONVERT_BN_TO_SYNC_BN: True (mmengine applies it on distributed runs)
