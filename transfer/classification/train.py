"""Build mmpretrain's Runner, verify the backbone load, train, and collect what the record needs.

Loading and resuming go through verified helpers (``transfer.classification.backbone``):
mmengine loads ``init_cfg=Pretrained`` non-strictly and only warns about keys it could not place, so
every backbone tensor is compared with the converted file before the first iteration; a resume reads the
Runner's own file as data (``runner-file://``) and checks that it restored every tensor of the model.
In linear mode the backbone is compared with the converted file again after training: frozen means
every weight and every BatchNorm statistic bit-identical (``num_batches_tracked`` included).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from transfer.records import TaskFailed, append_jsonl, read_jsonl

EPOCHS_FILE = "epochs.jsonl"  # every validated epoch, kept across --resume (the best-over-epochs needs all)


def _resume_point(cfg: Any) -> str | None:
    """The Runner checkpoint to resume from (``cfg.resume``), else None after clearing the pointer."""
    from mmengine.runner import find_latest_checkpoint

    pointer = Path(cfg.work_dir) / "last_checkpoint"
    if not cfg.get("resume"):  # a fresh start: a later --resume must never continue an earlier attempt's file
        pointer.unlink(missing_ok=True)
        return None
    if os.path.lexists(pointer) and not pointer.is_file():  # mmengine would open a FIFO and block
        raise FileNotFoundError(f"--resume: {pointer} is not a regular file (mmengine's pointer to the latest "
                                "Runner checkpoint); run without --resume to start over")
    latest = find_latest_checkpoint(cfg.work_dir)
    if latest is None:
        raise FileNotFoundError(f"--resume: no Runner checkpoint in {cfg.work_dir}")
    work = Path(cfg.work_dir).resolve()
    if Path(latest).resolve().parent != work:  # last_checkpoint is a text file naming any path
        raise FileNotFoundError(f"--resume: {work}/last_checkpoint points outside the run ({latest}); "
                                "only the Runner's own checkpoints in its work folder are resumed")
    return latest


def _init_cpu_group(cfg: Any) -> None:
    """On CPUs mmengine's ``init_dist`` would call ``torch.cuda.set_device``: start gloo here instead."""
    import torch
    import torch.distributed as dist

    if cfg.launcher == "pytorch" and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")


def _epoch_log_hook(path: Path) -> Any:
    from mmengine.hooks import Hook

    class EpochLogHook(Hook):
        priority = "LOWEST"

        def after_val_epoch(self, runner, metrics=None) -> None:
            if runner.rank == 0 and metrics:
                append_jsonl(path, {"epoch": runner.epoch, "top1": float(metrics["accuracy/top1"]),
                                    "top5": float(metrics["accuracy/top5"])})

    return EpochLogHook()


def train_and_evaluate(cfg: Any, converted: Path, out: Path, frozen: bool) -> dict[str, Any]:
    """Train and validate; returns ``epochs`` (every validated epoch), ``hits`` (last validation, per image), ``extra``."""
    from mmengine.runner import Runner

    from transfer.classification.engine import make_record_hook
    from transfer.classification.backbone import (RUNNER_SCHEME, backbone_of, differing, make_loaded_hook,
                                                  read_converted, register_runner_scheme, verify_backbone_state)

    register_runner_scheme()
    _init_cpu_group(cfg)
    latest = _resume_point(cfg)
    epochs_file = out / EPOCHS_FILE
    if latest is None:
        epochs_file.unlink(missing_ok=True)
    else:
        cfg.load_from = RUNNER_SCHEME + str(latest)  # read as data: transfer.backbones.read
    if cfg.get("visualizer") is not None:  # one visualizer name per Runner: its files stay in its own folder
        cfg.visualizer.name = f"visualizer_{time.time_ns()}"
    runner = Runner.from_cfg(cfg)
    verify_backbone_state(backbone_of(runner.model), read_converted(converted), check_values=False)
    record_hook = make_record_hook()
    runner.register_hook(make_loaded_hook(converted, resumed=Path(latest) if latest else None))
    runner.register_hook(record_hook)
    runner.register_hook(_epoch_log_hook(epochs_file))
    try:
        runner.train()
        # did not end on a validation (every rank decides alike: the metrics reach all, the hits only rank 0)
        if not record_hook.epochs or record_hook.epochs[-1]["epoch"] != runner.epoch:
            runner.val()
    finally:
        log = Path(runner.log_dir) / f"{runner.timestamp}.log"
        if log.is_file():
            shutil.copyfile(log, out / "train.log")
    extra: dict[str, Any] = {"engine_resumed_from": Path(latest).name if latest else None}
    if frozen:
        changed = differing(backbone_of(runner.model), read_converted(converted))
        if changed:
            raise TaskFailed(f"linear protocol: {len(changed)} backbone tensors changed during training "
                             f"(e.g. {changed[:3]}); the backbone must stay frozen, BatchNorm statistics included")
        extra["backbone_unchanged"] = "every backbone weight and BatchNorm statistic bit-identical after training"
    epochs = {e["epoch"]: e for e in read_jsonl(epochs_file)}  # the last line of an epoch wins (a re-run epoch)
    return {"epochs": [epochs[k] for k in sorted(epochs)], "hits": record_hook.hits, "extra": extra}

