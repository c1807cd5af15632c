"""ViTDet Mask R-CNN, ViT-B/16, COCO, 100 epochs: detectron2's LazyConfig, key for key.

Source: facebookresearch/detectron2 (commit 02b5c4e) projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py
and the loader it imports, projects/ViTDet/configs/common/coco_loader_lsj.py (neither ships in the wheel);
the model is the wheel's own model_zoo config common/models/mask_rcnn_vitdet.py (ViT-B, drop path 0.1,
window attention of 14 in all blocks but 2, 5, 8, 11, relative positions, simple feature pyramid, LN heads).

One difference: ``train.init_checkpoint`` is empty. ``python -m transfer.detection`` loads ``--ckpt``
itself (read tensors-only, converted by transfer/backbones/vit/detectron2.py, verified after loading); the
relative-position tables the checkpoint lacks start at zero and are listed in the record.
"""
from functools import partial

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

# --- model: the model zoo's ViTDet Mask R-CNN (ViT-B)
model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model

# --- data: COCO with large-scale jitter (LSJ) at 1024 px, 64 images per iteration (coco_loader_lsj.py)
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=1024, target_width=1024),
    L(T.FixedSizeCrop)(crop_size=(1024, 1024), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.recompute_boxes = True  # boxes follow the crop
dataloader.train.total_batch_size = 64
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=1024, max_size=1024)]

# --- trainer: AMP, fp16 gradient compression; 100 epochs = 184375 iterations x 64 images / 118k images
train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = ""
train.max_iter = 184375

# --- schedule: 250 warm-up iterations, lr x0.1 at 163889 and x0.01 at 177546
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[163889, 177546], num_updates=train.max_iter),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

# --- optimizer: AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.1 (none on norms and pos_embed),
# layer-wise lr decay 0.7 over the 12 blocks of ViT-B
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
