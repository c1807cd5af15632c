# The data loaders' engine settings every dataset config shares (workers, samplers; validation one
# image at a time); each dataset config adds its `dataset` and per-process `batch_size`. Kept apart
# from _base_seg_runtime.py so that the model bases hold no data loader.
train_dataloader = dict(
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False))
test_dataloader = val_dataloader
