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
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from plumbing.atomic import write_text_atomic
from transfer.backbones.info import CheckpointInfo, add_backbone_arg
from transfer.engines import sync_norms_to_bn
from transfer.segmentation.batch import apply_batch, shrink_for_smoke
from transfer.records import EXIT_USAGE, TaskFailed, TaskRun
from plumbing import project_path

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
    p.add_argument("--launcher", choices=("none", "pytorch", "slurm"), default="none")
    p.add_argument("--data-root", help="dataset root; replaces data_root of every dataset in the config")
    p.add_argument("--cfg-options", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config entries, mmengine style (e.g. train_cfg.max_iters=100); repeatable. "
                        "train_dataloader.batch_size=B caps the per-process batch (accumulation keeps the global one)")
    p.add_argument("--num-gpus", type=int, default=1,
                   help="processes on this machine; > 1 relaunches under torchrun with --launcher pytorch")
    p.add_argument("--smoke", action="store_true",
                   help="pipeline check: 2 iterations, 32 px images, global batch 2, no workers (scale: smoke)")
    p.add_argument("--any-batch", action="store_true",
                   help="allow an effective global batch other than the config's global_batch (recorded as off-protocol)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default); 1 avoids oversubscribing a CPU shared with data workers")
    p.add_argument("--deterministic", action="store_true",
                   help="reproducible to the bit on one machine: seeded data order and augmentation, deterministic "
                        "kernels (torch.use_deterministic_algorithms), one CPU thread unless --threads says otherwise")
    p.add_argument("--resume", action="store_true", help="resume from the latest Runner checkpoint in DIR/work")
    p.add_argument("--force", action="store_true", help="re-run even if DIR/record.json exists")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                   help="no TensorBoard events (mmengine's TensorboardVisBackend) in DIR/work/<timestamp>/vis_data")
    add_backbone_arg(p)
    return p


def load_config(args: argparse.Namespace, info: CheckpointInfo) -> Any:
    """Read the config, apply the command line, and check its backbone against ``info``."""
    from mmengine.config import Config, DictAction

    from transfer.backbones.resnet.mmseg import check_backbone_cfg
    from transfer.segmentation.data import set_data_root

    path = Path(args.config) if args.config else DEFAULT_CONFIGS[args.scale or "demo"]
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file (expected an mmseg config, e.g. {CONFIG_DIR}/*.py)")
    cfg = Config.fromfile(str(path))
    protocol_batch = cfg.get("global_batch")
    per_gpu_cap = None
    if args.cfg_options:
        parsed = argparse.Namespace()
        DictAction(option_strings=[], dest="opts")(None, parsed, args.cfg_options)
        per_gpu_cap = parsed.opts.pop("train_dataloader.batch_size", None)
        cfg.merge_from_dict(parsed.opts)
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
    cfg.launcher = args.launcher
    world = _world_size(args.launcher)
    cfg.batch_plan = dict(apply_batch(cfg, world, int(per_gpu_cap) if per_gpu_cap else None).as_record(),
                          protocol=protocol_batch)
    if protocol_batch and cfg.batch_plan["effective"] != protocol_batch and not (args.any_batch or args.smoke):
        raise ValueError(f"effective global batch {cfg.batch_plan['effective']} differs from the protocol's "
                         f"{protocol_batch} ({path.name}); pass --any-batch to run it anyway (recorded as off-protocol)")
    import torch

    if world == 1 or not torch.cuda.is_available():  # SyncBN: nothing to sync, or no GPU to sync on
        sync_norms_to_bn(cfg.model, "type")
        cfg.norm_cfg = dict(cfg.get("norm_cfg") or {}, type="BN")
    if world > 1 and not torch.cuda.is_available():  # CPU processes: gloo, DDP without device ids
        cfg.env_cfg = dict(cfg.get("env_cfg") or {}, dist_cfg=dict(backend="gloo"))
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
    cfg.randomness = dict(seed=args.seed)
    if getattr(args, "deterministic", False):
        make_deterministic(cfg)
    if getattr(args, "tensorboard", True):
        add_tensorboard(cfg)
    cfg.work_dir = str(Path(args.out) / "work")
    cfg.config_file = str(path)
    return cfg


def add_tensorboard(cfg: Any) -> None:
    """mmengine's ``TensorboardVisBackend`` beside the config's own backends, added here at load time so
    that the config files stay as they are: every scalar mmengine's ``LoggerHook`` logs (loss terms,
    lr, iteration time; mIoU, mAcc, aAcc at each validation) also goes to an event file."""
    vis = cfg.get("visualizer")
    if vis is None:  # a config without a visualizer: mmengine builds a bare one, with no backends to extend
        return
    backends = list(vis.get("vis_backends") or [])
    if not any(b.get("type") == "TensorboardVisBackend" for b in backends):
        vis.vis_backends = [*backends, dict(type="TensorboardVisBackend")]


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
            loss = (outputs or {}).get("loss")
            if loss is None:
                return
            value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
            if not math.isfinite(value):
                raise TaskFailed(
                    f"loss is {value} at iteration {runner.iter + 1}; training diverged "
                    "(lower the learning rate or check the labels)"
                )

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
    from mmengine.runner import Runner, find_latest_checkpoint

    from transfer.segmentation.backbone import (backbone_of, make_loaded_hook, read_converted, register_runner_scheme,
                                                runner_file, verify_backbone_state)

    register_runner_scheme()
    _init_cpu_group(cfg)
    if cfg.get("resume"):
        pointer = Path(cfg.work_dir) / "last_checkpoint"
        if os.path.lexists(pointer) and not pointer.is_file():  # mmengine would open a FIFO and block
            raise FileNotFoundError(f"--resume: {pointer} is not a regular file (mmengine's pointer to the "
                                    "latest Runner checkpoint); run without --resume to start over")
        latest = find_latest_checkpoint(cfg.work_dir)
        if latest is None:
            raise FileNotFoundError(f"--resume: no Runner checkpoint in {cfg.work_dir}")
        work = Path(cfg.work_dir).resolve()
        if Path(latest).resolve().parent != work:  # last_checkpoint is a text file naming any path
            raise FileNotFoundError(f"--resume: {work}/last_checkpoint points outside the run ({latest}); "
                                    "only the Runner's own checkpoints in its work folder are resumed")
        cfg.load_from = runner_file(latest)  # read as data: transfer.backbones.read
    else:  # a fresh start: a later --resume must never continue an earlier attempt's file
        (Path(cfg.work_dir) / "last_checkpoint").unlink(missing_ok=True)
    if cfg.get("visualizer") is not None:
        # mmseg's configs name it 'visualizer', and mmengine hands back an existing instance of that
        # name, whose save_dir is an earlier run's folder: a second run in one process would write its
        # config and logs there. One name per Runner keeps every run's files in its own work folder.
        cfg.visualizer.name = f"visualizer_{time.time_ns()}"
    runner = Runner.from_cfg(cfg)
    # Before any data is read: names and shapes; BackboneLoadedHook then checks the loaded values.
    verify_backbone_state(backbone_of(runner.model), read_converted(converted), check_values=False)
    record_hook = make_metrics_hook()
    runner.register_hook(make_loaded_hook(converted, resumed=Path(latest) if cfg.get("resume") else False))
    runner.register_hook(record_hook)
    try:
        runner.train()
        if record_hook.val_iter != runner.iter:  # the schedule did not end on a validation
            record_hook.metrics = dict(runner.val())
    finally:
        _copy_log(runner, Path(cfg.work_dir).parent)
    missing = [m for m in METRICS if m not in record_hook.metrics]
    if missing:
        raise TaskFailed(f"IoUMetric returned {sorted(record_hook.metrics)}, missing {missing}")
    return {m: round(float(record_hook.metrics[m]), 2) for m in METRICS}  # IoUMetric rounds to 0.01


def _init_cpu_group(cfg: Any) -> None:
    """On CPUs mmengine's ``init_dist`` would call ``torch.cuda.set_device``: start gloo here instead."""
    import torch
    import torch.distributed as dist

    if cfg.launcher == "pytorch" and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")


def _copy_log(runner: Any, out_dir: Path) -> None:
    log = Path(runner.log_dir) / f"{runner.timestamp}.log"
    if log.is_file():
        shutil.copyfile(log, out_dir / "train.log")


def _world_size(launcher: str) -> int:
    if launcher == "none":
        return 1
    return int(os.environ.get("WORLD_SIZE" if launcher == "pytorch" else "SLURM_NTASKS", "1"))


def _rank(launcher: str) -> int:
    """This process's rank as the launcher will set it (before mmengine initialises the group)."""
    if launcher == "none":
        return 0
    return int(os.environ.get("RANK" if launcher == "pytorch" else "SLURM_PROCID", "0"))


def run(args: argparse.Namespace, task: TaskRun | None) -> None:
    """The whole task; ``task`` is None on ranks > 0 (only rank 0 writes the record)."""
    from dataclasses import asdict

    from transfer.backbones import load
    from transfer.backbones.resnet.load import refuse_cifar_stem
    from transfer.backbones.resnet.mmseg import to_mmseg_file
    from transfer.engines import require_mmseg
    from transfer.segmentation.data import check_data_layout

    require_mmseg()
    threads = args.threads or (1 if args.deterministic else 0)  # float sums split by thread count
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    state, info = load(args.ckpt, args.backbone)
    refuse_cifar_stem(info, "mmseg")
    cfg = load_config(args, info)
    cfg.resume = bool(args.resume)
    dataset = str(cfg.get("dataset_name") or Path(cfg.config_file).stem)
    if task is not None:
        batch = dict(cfg.batch_plan, off_protocol=bool(cfg.batch_plan["protocol"])
                     and cfg.batch_plan["effective"] != cfg.batch_plan["protocol"])
        task.record.update(dataset=dataset, checkpoint=asdict(info), method=info.method,
                           config=cfg.to_dict(), batch=batch)
        if args.smoke:
            task.record["scale"] = "smoke"
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


def _with_option(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag``'s value replaced (``--flag V`` or ``--flag=V``), for the relaunched processes."""
    out = [a for a in argv]
    for i, a in enumerate(out):
        if a == flag and i + 1 < len(out):
            out[i + 1] = value
        elif a.startswith(flag + "="):
            out[i] = f"{flag}={value}"
    return out


def relaunch(argv: list[str], nproc: int) -> int:
    """Run this command again under torchrun with ``nproc`` processes (``--launcher pytorch``)."""
    import socket
    import subprocess

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "transfer.segmentation",
           *argv, "--launcher", "pytorch"]
    print("segmentation: " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.num_gpus < 1:
        print(f"segmentation: --num-gpus {args.num_gpus}: expected >= 1", file=sys.stderr)
        return EXIT_USAGE
    if args.scale is None:
        args.scale = "demo" if args.config is None or Path(args.config).stem.endswith("_demo") else "paper"
    if args.config is not None:  # a project config by name from any directory; checked before torchrun (one line)
        args.config = str(project_path(args.config))
        if not Path(args.config).is_file():
            print(f"segmentation: --config {args.config}: no such file (expected an mmseg config path, or a name "
                  f"under the project, e.g. transfer/mmseg_configs/{DEFAULT_CONFIGS['paper'].name})", file=sys.stderr)
            return EXIT_USAGE
        argv = _with_option(argv, "--config", args.config)
    if args.num_gpus > 1 and args.launcher == "none":
        return relaunch(argv, args.num_gpus)
    if _rank(args.launcher) != 0:
        run(args, None)
        return 0
    scale_config = args.config or str(DEFAULT_CONFIGS[args.scale or "demo"])
    try:
        # --cfg-options change the protocol: a paper-scale run with any is labelled so (never a paper number)
        scale = "paper+overrides" if args.scale == "paper" and args.cfg_options else args.scale
        task = TaskRun(task="segmentation", dataset=Path(scale_config).stem, scale=scale,
                       out_dir=args.out, ckpt_info=None, config={"config_file": scale_config, "backbone": args.backbone},
                       seeds=[args.seed], force=args.force or args.resume)
    except FileExistsError as e:
        print(f"segmentation: {e}", file=sys.stderr)
        return EXIT_USAGE
    with task:
        run(args, task)
    return task.exit_code
