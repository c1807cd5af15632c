# iNaturalist 2018 linear, VISSL's eval_resnet_8gpu_transfer_inaturalist18_linear.yaml (l. 96-109): 84 epochs,
# lr 0.01 x0.1 at epochs 24, 48, 72; 8142 classes; train2018.json / val2018.json (transfer/vissl_datasets.py).
# The yaml also has a res5avg head (l. 66, 79: the 2048-d avgpool); the headline here is its res5 head (l. 65, 78),
# as on Places205.
_base_ = ['./_base_vissl_linear.py']
dataset_name = 'inat18'
data_hint = 'iNat18 as {train,val}2018.json + train_val2018/<supercategory>/<category id>/*.jpg'
data_root = 'data/inat18'
num_classes = 8142
epochs = 84
milestones = [24, 48, 72]
model = dict(head=dict(num_classes=num_classes), data_preprocessor=dict(num_classes=num_classes))
param_scheduler = [dict(type='MultiStepLR', milestones=milestones, gamma=0.1, by_epoch=True, begin=0, end=epochs)]
train_cfg = dict(max_epochs=epochs)
