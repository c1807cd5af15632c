"""The protocol's global batch on any number of processes, and the smoke shortening of a config.

mmseg's ``4xb4`` / ``4xb2`` configs state a per-GPU batch, so the global batch silently follows the
number of processes. Here a config states ``global_batch`` (PROTOCOLS.md: VOC12aug 16, Cityscapes 8)
and :func:`plan_batch` turns it into (per-process batch, gradient accumulation) for the world size;
:func:`apply_batch` writes that into the config (``train_dataloader.batch_size``, mmengine's
``optim_wrapper.accumulative_counts``) and stretches every iteration count by the accumulation so
the number of optimizer steps, and the schedule over them, stay the protocol's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


class BatchError(ValueError):
    """The protocol's global batch cannot be formed on this many processes (one line)."""


@dataclass(frozen=True)
class BatchPlan:
    world_size: int
    per_gpu: int
    accumulation: int
    protocol: int | None  # the config's global_batch; None when the config states none

    @property
    def effective(self) -> int:
        return self.per_gpu * self.world_size * self.accumulation

    def as_record(self) -> dict[str, Any]:
        return dict(asdict(self), effective=self.effective)


def plan_batch(global_batch: int, world_size: int, max_per_gpu: int | None = None) -> BatchPlan:
    """Smallest accumulation ``a`` with ``global = per_gpu * world * a`` (and ``per_gpu <= max``)."""
    if global_batch < 1 or world_size < 1:
        raise BatchError(f"global batch {global_batch} on {world_size} processes: both must be >= 1")
    for accumulation in range(1, global_batch + 1):
        share, rest = divmod(global_batch, world_size * accumulation)
        if share == 0:
            break
        if rest == 0 and (max_per_gpu is None or share <= max_per_gpu):
            return BatchPlan(world_size, share, accumulation, global_batch)
    raise BatchError(f"global batch {global_batch} cannot be split over {world_size} processes"
                     + (f" with at most {max_per_gpu} per process" if max_per_gpu else "")
                     + f"; use a world size that divides {global_batch}")


def _scale_iters(cfg: Any, factor: int) -> None:
    """Multiply every iteration count by ``factor`` (accumulation: optimizer steps stay the same)."""
    cfg.train_cfg.max_iters = int(cfg.train_cfg.max_iters) * factor
    if cfg.train_cfg.get("val_interval"):
        cfg.train_cfg.val_interval = int(cfg.train_cfg.val_interval) * factor
    for sched in cfg.get("param_scheduler") or []:
        for key in ("begin", "end"):
            if sched.get(key) is not None and sched.get("by_epoch") is False:
                sched[key] = int(sched[key]) * factor
    hooks = cfg.get("default_hooks") or {}
    for name in ("checkpoint", "logger"):
        interval = (hooks.get(name) or {}).get("interval")
        if isinstance(interval, int) and interval > 0:
            hooks[name]["interval"] = interval * factor


def apply_batch(cfg: Any, world_size: int, max_per_gpu: int | None = None) -> BatchPlan:
    """Set the per-process batch and accumulation for ``world_size``; returns what was set."""
    global_batch = cfg.get("global_batch")
    if global_batch is None:  # a config of the old kind: its per-GPU batch is taken as given
        per_gpu = int(cfg.train_dataloader.batch_size)
        return BatchPlan(world_size, per_gpu, 1, None)
    plan = plan_batch(int(global_batch), world_size, max_per_gpu)
    cfg.train_dataloader.batch_size = plan.per_gpu
    if plan.accumulation > 1:
        cfg.optim_wrapper.accumulative_counts = plan.accumulation
        _scale_iters(cfg, plan.accumulation)
    return plan


def shrink_for_smoke(cfg: Any, side: int = 32, iters: int = 2) -> None:
    """A pipeline check: ``iters`` iterations, images and crops at ``side`` px, global batch 2, no workers or checkpoints."""
    cfg.global_batch = min(int(cfg.get("global_batch") or 2), 2)
    crop = (side, side)
    for pipeline in _pipelines(cfg):
        for step in pipeline:
            if "scale" in step:
                step["scale"] = (side * 2, side)
            if "crop_size" in step:
                step["crop_size"] = crop
            if step.get("type") == "Pad":
                step["size"] = crop
    cfg.model.data_preprocessor.size = crop
    if "img_size" in cfg.model.backbone:  # a ViT: its position embedding and relative tables follow the crop
        cfg.model.backbone.img_size = crop
    test_cfg = cfg.model.get("test_cfg") or {}
    if test_cfg.get("mode") == "slide":
        test_cfg.update(crop_size=crop, stride=(side // 2, side // 2))
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(loader) is not None:
            cfg[loader].update(num_workers=0, persistent_workers=False)
    cfg.train_cfg.update(max_iters=iters, val_interval=iters)
    cfg.param_scheduler = [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=iters, by_epoch=False)]
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=-1, save_last=False)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=1, log_metric_by_epoch=False)
    cfg.default_hooks.visualization = dict(type="SegVisualizationHook", draw=False)
    cfg.env_cfg = dict(cfg.get("env_cfg") or {}, cudnn_benchmark=False)


def _pipelines(cfg: Any):
    from transfer.segmentation.data import dataset_cfgs

    for _, dataset in dataset_cfgs(cfg):
        if dataset.get("pipeline"):
            yield dataset["pipeline"]
    for name in ("train_pipeline", "test_pipeline"):
        if cfg.get(name):
            yield cfg[name]
