"""What a thin task over mmengine's ``Runner`` adds, written once for the mmseg and mmpretrain task packages.

``transfer.segmentation`` (mmseg) and ``transfer.classification`` (mmpretrain) are both one command
around one mmengine Runner; task packages may not import one another (tests/test_layers.py), so what
they share sits here, on the floor:

- the command line both take (launcher, processes, ``--cfg-options``, batch, seed, threads, resume,
  force, TensorBoard) and the run around it (:func:`launch`: torchrun relaunch, rank > 0 without a
  record, one-line usage errors);
- the config as the command line leaves it (:func:`load_runner_config`: ``--cfg-options`` with the
  per-process batch cap, the protocol's global batch kept, CPU processes on gloo, seed, TensorBoard);
- the Runner's surroundings: a CPU process group, the Runner's own latest checkpoint for ``--resume``
  (never a path outside its work folder, never a FIFO), a visualizer per Runner, the log copied out,
  a non-finite loss as a failed record, the record's engine part.

The backbone's weights inside the Runner (verified load, the Runner file read as data) are the
backbones layer's: :mod:`transfer.backbones.mmengine_weights`.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from plumbing import project_path
from transfer.records import EXIT_USAGE, TaskFailed, TaskRun


def add_runner_args(p: argparse.ArgumentParser, cfg_example: str, smoke_help: str) -> None:
    """The options every mmengine task takes (after its own: checkpoint, output, config, data)."""
    p.add_argument("--launcher", choices=("none", "pytorch", "slurm"), default="none")
    p.add_argument("--num-gpus", type=int, default=1,
                   help="processes on this machine; > 1 relaunches under torchrun with --launcher pytorch")
    p.add_argument("--cfg-options", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help=f"override config entries, mmengine style (e.g. {cfg_example}); repeatable. "
                        "train_dataloader.batch_size=B caps the per-process batch (accumulation keeps the global one)")
    p.add_argument("--smoke", action="store_true", help=smoke_help)
    p.add_argument("--any-batch", action="store_true",
                   help="allow an effective global batch other than the config's global_batch (recorded as off-protocol)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default); 1 avoids oversubscribing a CPU shared with data workers")
    p.add_argument("--resume", action="store_true", help="resume from the latest Runner checkpoint in DIR/work")
    p.add_argument("--force", action="store_true", help="re-run even if DIR/record.json exists")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                   help="no TensorBoard events (mmengine's TensorboardVisBackend) in DIR/work/<timestamp>/vis_data")


def load_runner_config(args: argparse.Namespace, path: Path, adapt: Callable[[Any], None],
                       plan_batch: Callable[[Any, int, int | None], dict[str, int]]) -> Any:
    """Read ``path``, apply ``--cfg-options``, let the task ``adapt`` it (data root, backbone, smoke), plan
    the protocol's global batch on this launcher's world (``plan_batch(cfg, world, per_gpu_cap)``), and set
    what every Runner here needs (CPU processes, seed, TensorBoard, work folder)."""
    from mmengine.config import Config, DictAction

    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file (expected an mmengine config file)")
    cfg = Config.fromfile(str(path))
    protocol_batch = cfg.get("global_batch")
    per_gpu_cap = None
    if args.cfg_options:
        parsed = argparse.Namespace()
        DictAction(option_strings=[], dest="opts")(None, parsed, args.cfg_options)
        per_gpu_cap = parsed.opts.pop("train_dataloader.batch_size", None)
        cfg.merge_from_dict(parsed.opts)
    adapt(cfg)
    cfg.launcher = args.launcher
    world = world_size(args.launcher)
    plan = plan_batch(cfg, world, int(per_gpu_cap) if per_gpu_cap else None)
    cfg.batch_plan = dict(plan, protocol=protocol_batch)
    if protocol_batch and plan["effective"] != protocol_batch and not (args.any_batch or args.smoke):
        raise ValueError(f"effective global batch {plan['effective']} differs from the protocol's {protocol_batch} "
                         f"({path.name}); pass --any-batch to run it anyway (recorded as off-protocol)")
    import torch

    if world > 1 and not torch.cuda.is_available():  # CPU processes: gloo, DDP without device ids
        cfg.env_cfg = dict(cfg.get("env_cfg") or {}, dist_cfg=dict(backend="gloo"))
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
    cfg.randomness = dict(seed=args.seed)
    if getattr(args, "tensorboard", True):
        add_tensorboard(cfg)
    cfg.work_dir = str(Path(args.out) / "work")
    cfg.config_file = str(path)
    return cfg


def add_tensorboard(cfg: Any) -> None:
    """mmengine's ``TensorboardVisBackend`` beside the config's own backends, added here at load time so
    that the config files stay as they are: every scalar mmengine's ``LoggerHook`` logs (loss terms,
    lr, iteration time; the metrics at each validation) also goes to an event file."""
    vis = cfg.get("visualizer")
    if vis is None:  # a config without a visualizer: mmengine builds a bare one, with no backends to extend
        return
    backends = list(vis.get("vis_backends") or [])
    if not any(b.get("type") == "TensorboardVisBackend" for b in backends):
        vis.vis_backends = [*backends, dict(type="TensorboardVisBackend")]


def set_threads(threads: int) -> None:
    """``torch.set_num_threads`` when asked (0: torch's default)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def record_engine_part(task: TaskRun | None, cfg: Any, info: Any, dataset: str, **more: Any) -> None:
    """The record's fields every mmengine task fills before training (rank 0 only: ``task`` is None elsewhere)."""
    if task is None:
        return
    plan = cfg.batch_plan
    batch = dict(plan, off_protocol=bool(plan["protocol"]) and plan["effective"] != plan["protocol"])
    task.record.update(dataset=dataset, checkpoint=asdict(info), method=info.method, config=cfg.to_dict(),
                       batch=batch, **more)


def init_cpu_group(cfg: Any) -> None:
    """On CPUs mmengine's ``init_dist`` would call ``torch.cuda.set_device``: start gloo here instead."""
    import torch
    import torch.distributed as dist

    if cfg.launcher == "pytorch" and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")


def resume_point(cfg: Any) -> Path | None:
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
    return Path(latest)


def name_visualizer(cfg: Any) -> None:
    """One visualizer name per Runner. OpenMMLab configs name it 'visualizer', and mmengine hands back an
    existing instance of that name, whose save_dir is an earlier run's folder: a second run in one process
    would write its config and logs there."""
    if cfg.get("visualizer") is not None:
        cfg.visualizer.name = f"visualizer_{time.time_ns()}"


def copy_log(runner: Any, out_dir: Path) -> None:
    """The Runner's text log as ``out_dir/train.log``; then the Runner's log file is closed.

    mmengine keeps the Runner's logger as the process's current one: a later task in the same process (tests,
    a notebook) would log into this run's file, or fail once its folder is gone. Its file handlers are removed.
    """
    import logging

    log = Path(runner.log_dir) / f"{runner.timestamp}.log"
    if log.is_file():
        shutil.copyfile(log, Path(out_dir) / "train.log")
    for handler in [h for h in runner.logger.handlers if isinstance(h, logging.FileHandler)]:
        runner.logger.removeHandler(handler)
        handler.close()


def raise_if_diverged(runner: Any, outputs: Any) -> None:
    """For a hook's ``after_train_iter``: a non-finite loss ends the run as a failed record."""
    loss = (outputs or {}).get("loss")
    if loss is None:
        return
    value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
    if not math.isfinite(value):
        raise TaskFailed(f"loss is {value} at iteration {runner.iter + 1}; training diverged "
                         "(lower the learning rate or check the labels)")


def world_size(launcher: str) -> int:
    if launcher == "none":
        return 1
    return int(os.environ.get("WORLD_SIZE" if launcher == "pytorch" else "SLURM_NTASKS", "1"))


def launcher_rank(launcher: str) -> int:
    """This process's rank as the launcher will set it (before mmengine initialises the group)."""
    if launcher == "none":
        return 0
    return int(os.environ.get("RANK" if launcher == "pytorch" else "SLURM_PROCID", "0"))


def check_command(args: argparse.Namespace, argv: list[str], prog: str, example: str) -> list[str] | None:
    """``argv`` with ``--config`` resolved (a project config by name from any directory), checked before
    torchrun starts processes; None after a one-line usage error."""
    if args.num_gpus < 1:
        print(f"{prog}: --num-gpus {args.num_gpus}: expected >= 1", file=sys.stderr)
        return None
    if args.config is not None:
        args.config = str(project_path(args.config))
        if not Path(args.config).is_file():
            print(f"{prog}: --config {args.config}: no such file (expected a config path, or a name under the "
                  f"project, e.g. {example})", file=sys.stderr)
            return None
        argv = with_option(argv, "--config", args.config)
    return argv


def launch(args: argparse.Namespace, argv: list[str], module: str, start_task: Callable[[], TaskRun],
           run: Callable[[argparse.Namespace, TaskRun | None], None]) -> int:
    """Relaunch under torchrun when asked for processes; else run, writing the record on rank 0 only."""
    prog = module.rpartition(".")[2]
    if args.num_gpus > 1 and args.launcher == "none":
        return relaunch(argv, args.num_gpus, module)
    if launcher_rank(args.launcher) != 0:
        run(args, None)
        return 0
    try:
        task = start_task()
    except FileExistsError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE
    with task:
        run(args, task)
    return task.exit_code


def with_option(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag``'s value replaced (``--flag V`` or ``--flag=V``), for the relaunched processes."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == flag and i + 1 < len(out):
            out[i + 1] = value
        elif a.startswith(flag + "="):
            out[i] = f"{flag}={value}"
    return out


def relaunch(argv: list[str], nproc: int, module: str) -> int:
    """Run ``python -m module`` again under torchrun with ``nproc`` processes (``--launcher pytorch``)."""
    import socket
    import subprocess

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", module, *argv, "--launcher", "pytorch"]
    print(f"{module.rpartition('.')[2]}: " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode
