# ImageNet semi-supervised fine-tuning on 1 % of the labels, VICReg protocol (evaluate.py --weights finetune
# --train-percent 1 --epochs 20 --lr-backbone 0.03 --lr-head 0.08 --weight-decay 0; README's command spells
# the head's flag --lr-classifier, which evaluate.py's argparse does not define). The whole network trains,
# BatchNorm in train mode; SimCLR's 1percent.txt (12,811 files, shipped, sha256-checked).
_base_ = ['./_base_imagenet_vicreg.py']
protocol = 'finetune'
subset = '1percent'
epochs = 20
lr_head = 0.08
lr_backbone = 0.03
weight_decay = 0.0
model = dict(backbone=dict(frozen_stages=-1, norm_eval=False))
# two parameter groups as evaluate.py's: the head at lr_head, the backbone at lr_backbone (lr_mult)
optim_wrapper = dict(optimizer=dict(lr=lr_head, weight_decay=weight_decay),
                     paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=lr_backbone / lr_head)}))
param_scheduler = [dict(type='CosineAnnealingLR', T_max=epochs, eta_min=0.0, by_epoch=True, begin=0, end=epochs)]
train_cfg = dict(max_epochs=epochs)
