# Places205 linear, VISSL's eval_resnet_8gpu_transfer_places205_linear.yaml (l. 94-107): 14 epochs, lr 0.01
# x0.1 at epochs 4, 8, 12; 205 classes; the official trainvalsplit_places205 CSVs (transfer/vissl_datasets.py).
_base_ = ['./_base_vissl_linear.py']
dataset_name = 'places205'
data_hint = ('Places205 as trainvalsplit_places205/{train,val}_places205.csv + '
             'data/vision/torralba/deeplearning/images256/<l>/<class>/*.jpg')
data_root = 'data/places205'
num_classes = 205
epochs = 14
milestones = [4, 8, 12]
model = dict(head=dict(num_classes=num_classes), data_preprocessor=dict(num_classes=num_classes))
param_scheduler = [dict(type='MultiStepLR', milestones=milestones, gamma=0.1, by_epoch=True, begin=0, end=epochs)]
train_cfg = dict(max_epochs=epochs)
