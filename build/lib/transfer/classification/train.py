"""Build mmpretrain's Runner, verify the backbone load, train, and collect what the record needs.

Loading and resuming go through verified helpers (``transfer.backbones.mmengine_weights``):
mmengine loads ``init_cfg=Pretrained`` non-strictly and only warns about keys it could not place, so
every backbone tensor is compared with the converted file before the first iteration; a resume reads the
Runner's own file as data (``runner-file://``) and checks that it restored every tensor of the model.
In linear mode the backbone is compared with the converted file again after training: frozen means
every weight and every BatchNorm statistic bit-identical (``num_batches_tracked`` included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transfer.mmengine_task import copy_log
from transfer.records import TaskFailed, append_jsonl, read_jsonl

EPOCHS_FILE = "epochs.jsonl"  # every validated epoch, kept across --resume (the best-over-epochs needs all)


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
    from transfer.backbones.mmengine_weights import backbone_of, build_runner, differing, read_converted
    from transfer.classification.engine import make_record_hook

    epochs_file = out / EPOCHS_FILE
    if not cfg.get("resume"):
        epochs_file.unlink(missing_ok=True)
    runner, latest = build_runner(cfg, converted)
    record_hook = make_record_hook()
    runner.register_hook(record_hook)
    runner.register_hook(_epoch_log_hook(epochs_file))
    try:
        runner.train()
        # did not end on a validation (every rank decides alike: the metrics reach all, the hits only rank 0)
        if not record_hook.epochs or record_hook.epochs[-1]["epoch"] != runner.epoch:
            runner.val()
    finally:
        copy_log(runner, out)
    extra: dict[str, Any] = {"engine_resumed_from": Path(latest).name if latest else None}
    if frozen:
        changed = differing(backbone_of(runner.model), read_converted(converted))
        if changed:
            raise TaskFailed(f"linear protocol: {len(changed)} backbone tensors changed during training "
                             f"(e.g. {changed[:3]}); the backbone must stay frozen, BatchNorm statistics included")
        extra["backbone_unchanged"] = "every backbone weight and BatchNorm statistic bit-identical after training"
    epochs = {e["epoch"]: e for e in read_jsonl(epochs_file)}  # the last line of an epoch wins (a re-run epoch)
    return {"epochs": [epochs[k] for k in sorted(epochs)], "hits": record_hook.hits, "extra": extra}

