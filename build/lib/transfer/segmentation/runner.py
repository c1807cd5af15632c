"""Semantic-segmentation transfer (PROTOCOLS.md "Semantic segmentation"): FCN-D8 with MMSegmentation.

    python -m transfer.segmentation --ckpt X.pth --out DIR [--config FILE] [--scale demo|paper]
        [--launcher none|pytorch|slurm] [--data-root ROOT] [--cfg-options k=v ...] [--seed N]
        [--threads N] [--resume] [--force]

One run: read the checkpoint (``transfer.backbones.load``, ``weights_only=True``), check
the config's backbone against it and the dataset layout (one-line errors, before anything is
built), convert it to ``DIR/backbone_mmseg.pth``, build mmengine's ``Runner`` (the existing
distributed engine; SyncBN becomes BN in one process), verify that every backbone weight was
loaded, train, evaluate with ``IoUMetric`` and write ``DIR/record.json`` (mIoU, mAcc, aAcc in
percent), ``DIR/train.log`` and the resolved ``DIR/mmseg_config.py``; mmengine's
``TensorboardVisBackend`` writes the logged scalars as TensorBoard events in
``DIR/work/<timestamp>/vis_data/`` (``--no-tensorboard`` leaves it out). Exit codes follow the task
contract: 0 ok, 1 failed, 2 usage, 3 skipped (dataset not on disk).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from plumbing.atomic import write_text_atomic
from transfer.backbones.info import CheckpointInfo, add_backbone_arg
from transfer.engines import sync_norms_to_bn
from transfer.segmentation.batch import apply_batch, shrink_for_smoke
from transfer.mmengine_task import (add_runner_args, check_command, copy_log, launch, load_runner_config,
                                    raise_if_diverged, record_engine_part, set_threads)
from transfer.records import EXIT_USAGE, TaskFailed, TaskRun

CONFIG_DIR = Path(__file__).resolve().parents[1] / "mmseg_configs"
DEFAULT_CONFIGS = {
    "demo": CONFIG_DIR / "fcn_r18_d8_synthetic_64x64_demo.py",
    "paper": CONFIG_DIR / "fcn_r50_d8_voc12aug_512x512_20k.py",
}
METRICS = ("mIoU", "mAcc", "aAcc")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m transfer.segmentation", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="SSL checkpoint (any format transfer.backbones reads)")
    p.add_argument("--out", required=True, help="output directory (record.json, train.log, mmseg_config.py)")
    p.add_argument("--config", help="mmseg config file (default: the --scale's FCN config)")
    p.add_argument("--scale", choices=sorted(DEFAULT_CONFIGS), default=None,
                   help="protocol (default: demo for a *_demo config or no --config, else paper)")
    p.add_argument("--data-root", help="dataset root; replaces data_root of every dataset in the config")
    p.add_argument("--deterministic", action="store_true",
                   help="reproducible to the bit on one machine: seeded data order and augmentation, deterministic "
                        "kernels (torch.use_deterministic_algorithms), one CPU thread unless --threads says otherwise")
    add_runner_args(p, "train_cfg.max_iters=100",
                    "pipeline check: 2 iterations, 32 px images, global batch 2, no workers (scale: smoke)")
    add_backbone_arg(p)
    return p


def load_config(args: argparse.Namespace, info: CheckpointInfo) -> Any:
    """Read the config, apply the command line, and check its backbone against ``info``."""
    from transfer.backbones.resnet.mmseg import check_backbone_cfg
    from transfer.segmentation.data import set_data_root

    path = Path(args.config) if args.config else DEFAULT_CONFIGS[args.scale or "demo"]

    def adapt(cfg: Any) -> None:
        if args.data_root:
            set_data_root(cfg, args.data_root)
        heads = (cfg.model.get("decode_head"), cfg.model.get("auxiliary_head"))
        if info.family == "vit":
            from transfer.backbones.vit.mmseg import check_vit_cfg

            cfg.depth_notes = check_vit_cfg(cfg.model, info, path.name)
        else:
            cfg.depth_notes = check_backbone_cfg(cfg.model.backbone, info, path.name, heads)
        if args.smoke:
            shrink_for_smoke(cfg)

    cfg = load_runner_config(args, path, adapt, lambda c, world, cap: apply_batch(c, world, cap).as_record())
    import torch

    if cfg.batch_plan["world_size"] == 1 or not torch.cuda.is_available():  # SyncBN: nothing to sync, or no GPU
        sync_norms_to_bn(cfg.model, "type")
        cfg.norm_cfg = dict(cfg.get("norm_cfg") or {}, type="BN")
    if getattr(args, "deterministic", False):
        make_deterministic(cfg)
    return cfg


def make_deterministic(cfg: Any) -> None:
    """Everything that could make two runs of one config on one machine differ, pinned.

    mmengine seeds ``random``, numpy and torch from ``randomness.seed`` (data order and augmentation:
    ``InfiniteSampler`` draws its seed from numpy); data workers would each get a seed of their own,
    so there are none; OpenCV's resize runs on one thread (``env_cfg.opencv_num_threads=0``); torch
    uses deterministic kernels where it has them (``warn_only``: CUDA's bilinear-upsampling backward
    has none and would otherwise refuse the run; on a CPU every kernel used here is deterministic).
    The thread count, which changes how float sums are split, is pinned in :func:`run`.
    """
    import torch

    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(loader) is not None:
            cfg[loader].update(num_workers=0, persistent_workers=False)
    cfg.env_cfg = dict(cfg.get("env_cfg") or {}, cudnn_benchmark=False, opencv_num_threads=0)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic mode needs it
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    cfg.deterministic = True  # in the record


def make_metrics_hook() -> Any:
    """Hook that stops training on a non-finite loss and keeps the last validation metrics."""
    from mmengine.hooks import Hook

    class SegRecordHook(Hook):
        priority = "LOW"

        def __init__(self) -> None:
            self.metrics: dict[str, float] = {}
            self.val_iter = -1

        def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
            raise_if_diverged(runner, outputs)

        def after_val_epoch(self, runner, metrics=None) -> None:
            self.metrics = dict(metrics or {})
            self.val_iter = runner.iter

    return SegRecordHook()


def attach_checkpoint(cfg: Any, converted: Path) -> None:
    """Load ``converted`` the mmseg way: the backbone's ``init_cfg`` (mmengine's PretrainedInit)."""
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(converted), prefix="backbone.")


def train_and_evaluate(cfg: Any, converted: Path) -> dict[str, float]:
    """Build the Runner, verify the backbone load, train, and return the final IoUMetric values.

    ``cfg`` already points its backbone at ``converted`` (:func:`attach_checkpoint`).
    """
    from transfer.backbones.mmengine_weights import build_runner

    runner, _ = build_runner(cfg, converted)
    record_hook = make_metrics_hook()
    runner.register_hook(record_hook)
    try:
        runner.train()
        if record_hook.val_iter != runner.iter:  # the schedule did not end on a validation
            record_hook.metrics = dict(runner.val())
    finally:
        copy_log(runner, Path(cfg.work_dir).parent)
    missing = [m for m in METRICS if m not in record_hook.metrics]
    if missing:
        raise TaskFailed(f"IoUMetric returned {sorted(record_hook.metrics)}, missing {missing}")
    return {m: round(float(record_hook.metrics[m]), 2) for m in METRICS}  # IoUMetric rounds to 0.01


def run(args: argparse.Namespace, task: TaskRun | None) -> None:
    """The whole task; ``task`` is None on ranks > 0 (only rank 0 writes the record)."""
    from transfer.backbones import load
    from transfer.backbones.resnet.load import refuse_cifar_stem
    from transfer.backbones.resnet.mmseg import to_mmseg_file
    from transfer.engines import require_mmseg
    from transfer.segmentation.data import check_data_layout

    require_mmseg()
    set_threads(args.threads or (1 if args.deterministic else 0))  # float sums split by thread count
    state, info = load(args.ckpt, args.backbone)
    refuse_cifar_stem(info, "mmseg")
    cfg = load_config(args, info)
    cfg.resume = bool(args.resume)
    dataset = str(cfg.get("dataset_name") or Path(cfg.config_file).stem)
    record_engine_part(task, cfg, info, dataset, **({"scale": "smoke"} if args.smoke else {}))
    check_data_layout(cfg, dataset)
    out = Path(args.out)
    if info.family == "vit":
        from transfer.backbones.vit.mmseg import to_mmseg_vit_file

        converted, new, unused = to_mmseg_vit_file(state, info, cfg.model.backbone, out)
        if task is not None:  # tensors the engine's ViT has and the checkpoint had not (zero rel-pos, unit gammas)
            task.record["vit_conversion"] = {"new_tensors": new, "unused": unused}
    else:
        converted = to_mmseg_file(state, info, out)
    attach_checkpoint(cfg, converted)
    if task is not None:
        write_text_atomic(out / "mmseg_config.py", cfg.pretty_text)
    metrics = train_and_evaluate(cfg, converted)
    if task is not None:
        task.metrics.update(metrics)
        task.record["config"] = cfg.to_dict()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.scale is None:
        args.scale = "demo" if args.config is None or Path(args.config).stem.endswith("_demo") else "paper"
    argv = check_command(args, argv, "segmentation", f"transfer/mmseg_configs/{DEFAULT_CONFIGS['paper'].name}")
    if argv is None:
        return EXIT_USAGE
    scale_config = args.config or str(DEFAULT_CONFIGS[args.scale or "demo"])

    def start_task() -> TaskRun:
        # --cfg-options change the protocol: a paper-scale run with any is labelled so (never a paper number)
        scale = "paper+overrides" if args.scale == "paper" and args.cfg_options else args.scale
        return TaskRun(task="segmentation", dataset=Path(scale_config).stem, scale=scale, out_dir=args.out,
                       ckpt_info=None, config={"config_file": scale_config, "backbone": args.backbone},
                       seeds=[args.seed], force=args.force or args.resume)

    return launch(args, argv, "transfer.segmentation", start_task, run)
