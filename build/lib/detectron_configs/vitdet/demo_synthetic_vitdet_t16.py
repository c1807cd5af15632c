"""Demo scale of mask_rcnn_vitdet_b_100ep.py on the synthetic scenes (ROOT/scenes, mast.data.synthetic).

The same model, recipe and schedule shape, scaled down: ViT-Tiny width (transfer.detection sets width and
heads from the checkpoint; patch 16 and 12 blocks must match), 64-px images (LSJ crop 64, window 2 on
the 4x4 patch grid, square padding 64), 8 shape classes, 2 images per iteration and 100 iterations with
the milestones at the same fractions of training, fewer proposals and RoIs, RLE masks read as bitmasks,
no AMP (CPU) and no data-loader workers. The LSJ scale range starts at 0.5: at 64 px, 0.1 leaves 6-px
images. Weight decay, layer-wise lr decay 0.7, lr 1e-4 and drop path 0.1 are the paper's.
"""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

IMAGE_SIZE, MAX_ITER = 64, 100

net = model.backbone.net
net.embed_dim, net.num_heads = 192, 3
net.img_size, net.window_size = IMAGE_SIZE, 2
model.backbone.square_pad = IMAGE_SIZE
model.proposal_generator.pre_nms_topk = (256, 256)
model.proposal_generator.post_nms_topk = (128, 64)
model.proposal_generator.batch_size_per_image = 64
model.roi_heads.num_classes = 8
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_predictor.test_topk_per_image = 20

dataloader.train.dataset.names = "synthetic_scenes_train"
dataloader.test.dataset.names = "synthetic_scenes_val"
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.5, max_scale=2.0, target_height=IMAGE_SIZE, target_width=IMAGE_SIZE),
    L(T.FixedSizeCrop)(crop_size=(IMAGE_SIZE, IMAGE_SIZE), pad=False),
]
dataloader.train.mapper.instance_mask_format = "bitmask"
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=IMAGE_SIZE, max_size=IMAGE_SIZE)]

train.amp.enabled = False
train.max_iter = MAX_ITER
train.eval_period = 0  # evaluate once, after training
train.checkpointer.period = 100000
lr_multiplier.scheduler.milestones = [round(MAX_ITER * 163889 / 184375), round(MAX_ITER * 177546 / 184375)]
lr_multiplier.scheduler.num_updates = MAX_ITER
