"""Pretrain a ResNet with VICReg or MAST (METHOD.md): ``python -m mast.pretrain``.

    python -m mast.pretrain [--config demo|stl10_r18|imagenet_r50|PATH.yaml] [--resume auto|PATH]
                            [--name NAME] [key=value ...]
    torchrun --nproc_per_node 8 -m mast.pretrain --config imagenet_r50 data.root=/data/imagenet/train
    python -m mast.pretrain --launcher slurm --nodes 2 --gpus-per-node 8 --config imagenet_r50 ...  # mast/pretrain_submit.py

No arguments = the CPU demo. The loop is written out (as facebookresearch/vicreg main_vicreg.py):
two views are cropped in DataLoader workers, colour-augmented on the device with recorded
parameters, embedded, and the eq. (6) loss steps two optimizers (LARS/AdamW for backbone +
expander, Adam for masks + uncertainty heads, METHOD.md §2). The run directory
``OUT_DIR/NAME/`` explains itself: config.yaml, versions.json, metrics.jsonl, summary.csv,
tensorboard/ (the same scalars; ``--no-tensorboard`` leaves it out), last.pth, backbone_init.pth,
backbone.pth, mast_state.pth.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mast import training_state as ckpt_io
from mast import rundir
from plumbing.atomic import DiskFullError, OutputError, make_folder, remove_stale_temps, torch_save_atomic
from mast.augment import PhotometricAugment, SpatialTwoView
from mast.config import ConfigError, PretrainConfig, load_config, to_dict
from mast.data.folder import BadImageBudget, DatasetError, ResumableSampler, TwoViewFolder, sample_seed
from mast.heldout import heldout_pass
from mast.knn_monitor import KnnMonitor
from plumbing.lock import FolderBusyError, FolderLock
from mast.model import MASTModel
from mast.optim import build_optimizer, build_subspace_optimizer, learning_rate, set_lr
from mast.run_log import RunLog
from plumbing.launcher_args import add_launcher_args
from plumbing.signals import stop_signals


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. non-finite loss); one-line message."""


@dataclass
class Context:
    """Everything the loop touches, built once by :func:`setup`."""
    cfg: PretrainConfig
    run_dir: Path
    device: torch.device
    rank: int
    world: int
    model: MASTModel                   # the raw model (state_dict, exports)
    forward: nn.Module                 # DDP / compiled wrapper used for training steps
    photometric: PhotometricAugment
    optimizer: torch.optim.Optimizer
    subspace_optimizer: torch.optim.Optimizer | None
    scaler: torch.amp.GradScaler | None
    loader: DataLoader
    sampler: ResumableSampler
    steps_per_epoch: int
    knn: KnnMonitor | None
    log: RunLog
    bad_images: BadImageBudget
    step: int = 0
    saved_step: int = 0
    first_nonfinite: torch.Tensor | None = None  # on the device: checked only when logging or saving
    extra: dict = field(default_factory=dict)
    lock: FolderLock | None = None
    interrupted: int = 0               # the signal number once SIGINT/SIGTERM arrived

    def autocast(self) -> contextlib.AbstractContextManager:
        precision = self.cfg.runtime.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)


def init_distributed(cfg: PretrainConfig) -> tuple[int, int, torch.device]:
    """torchrun env:// (nccl on CUDA, gloo on CPU) when WORLD_SIZE > 1; (rank, world, device)."""
    world, local_rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    want = cfg.runtime.device
    use_cuda = torch.cuda.is_available() if want == "auto" else want.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={want}: CUDA is not available on this machine")
    device = torch.device(f"cuda:{local_rank}" if use_cuda and want in ("auto", "cuda") else want if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if cfg.optim.batch_size % world:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} is not divisible by the "
                          f"{world} processes")
    return rank, world, device


def build_data(cfg: PretrainConfig, rank: int, world: int, device: torch.device):
    """Pretraining loader over ``data.root`` (generating the synthetic set first if asked)."""
    if cfg.data.synthetic:
        from mast.data.synthetic import SyntheticSpec, ensure_dataset
        if rank == 0:
            try:
                ensure_dataset(Path(cfg.data.synthetic_dir), getattr(SyntheticSpec, cfg.data.synthetic)())
            except ValueError as exc:
                raise DatasetError(f"data.synthetic_dir: {exc}") from None
        if world > 1:
            dist.barrier()
    dataset = TwoViewFolder(cfg.data.root, SpatialTwoView(cfg.augment))
    sampler = ResumableSampler(len(dataset), world, rank, cfg.seed)
    per_rank = cfg.optim.batch_size // world
    steps = sampler.per_rank // per_rank
    if steps == 0:
        raise DatasetError(f"data.root={cfg.data.root}: {len(dataset)} images are fewer than one "
                           f"batch (optim.batch_size={cfg.optim.batch_size})")
    workers = cfg.data.num_workers
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=workers,
                        drop_last=True, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    return loader, sampler, steps


def setup(cfg: PretrainConfig, resume: str | None, tensorboard: bool = True) -> Context:
    """Build data, model, optimizers and the run directory; restore ``last.pth`` on resume."""
    rank, world, device = init_distributed(cfg)
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    if cfg.runtime.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    run_dir = Path(cfg.out_dir) / cfg.name
    last = Path(resume) if resume not in (None, "auto") else run_dir / rundir.LAST
    if resume not in (None, "auto") and not last.is_file():
        raise ConfigError(f"--resume {resume}: no such checkpoint file")
    if resume not in (None, "auto") and (run_dir / rundir.CONFIG).exists() \
            and last.resolve().parent != run_dir.resolve():
        raise ConfigError(f"--resume {resume} --name {cfg.name}: {run_dir} is another existing run; "
                          f"continue {resume} into a new --name (or use --resume auto for {run_dir})")
    lock = None
    if rank == 0:  # one process writes the run folder; a second one is refused, naming the holder
        lock = FolderLock(make_folder(run_dir, "out_dir/name"), "mast.pretrain")
        remove_stale_temps(run_dir)  # what a killed save left; ours alone while we hold the folder
    if resume is None and last.exists():
        raise ConfigError(f"{last} exists: pass --resume auto to continue that run, or --name NEW")
    loader, sampler, steps_per_epoch = build_data(cfg, rank, world, device)
    knn = KnnMonitor(cfg.knn, cfg.knn.size or cfg.augment.size, cfg.augment.mean, cfg.augment.std, cfg.seed) \
        if cfg.knn.root and rank == 0 else None

    torch.manual_seed(cfg.seed)
    model = MASTModel(cfg.model_config(), cfg.loss, cfg.augment)
    if world > 1 and cfg.runtime.sync_bn and device.type == "cuda":  # torch's SyncBN is GPU-only
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if cfg.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.main_parameters(), cfg.optim)
    subspace_optimizer = build_subspace_optimizer(model.subspace_parameters(), cfg.optim)
    scaler = torch.amp.GradScaler(device.type) if cfg.runtime.precision == "fp16" else None
    forward: nn.Module = model
    if world > 1:
        forward = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=False)
    if cfg.runtime.compile:
        forward = torch.compile(forward)

    ctx = Context(cfg, run_dir, device, rank, world, model, forward, PhotometricAugment(cfg.augment).to(device),
                  optimizer, subspace_optimizer, scaler, loader, sampler, steps_per_epoch, knn,
                  RunLog(run_dir, enabled=rank == 0, tensorboard=tensorboard),
                  BadImageBudget(loader.dataset, cfg.data.max_bad_fraction, sampler.per_rank), lock=lock)
    config = to_dict(cfg)
    if resume is not None and last.exists():
        state = ckpt_io.load_training_state(last, config, world)
        ckpt_io.restore(state, model=model, optimizer=optimizer,
                        subspace_optimizer=subspace_optimizer, scaler=scaler)
        ctx.step = ctx.saved_step = state["step"]
        ctx.extra = state["extra"]
        ctx.bad_images.seen = set(ctx.extra.get("bad_seen", []))
        if rank == 0 and not (run_dir / rundir.CONFIG).exists():  # --resume PATH into a new run
            ctx.log.start(cfg)
        ctx.log.truncate(ctx.step, ctx.extra)
    elif rank == 0:
        ctx.log.start(cfg)
        torch_save_atomic(run_dir / rundir.BACKBONE_INIT, ckpt_io.backbone_state(model.backbone))
    return ctx


def check_finite(ctx: Context) -> None:
    """Raise TrainingError naming the first step whose loss was NaN/Inf (nothing is saved)."""
    if ctx.first_nonfinite is not None and int(ctx.first_nonfinite) >= 0:
        last = ctx.run_dir / rundir.LAST
        kept = f"last good checkpoint: {last} (step {ctx.saved_step})" if last.is_file() else "no checkpoint was saved before it"
        raise TrainingError(f"loss became NaN/Inf at step {int(ctx.first_nonfinite)}; stopped without saving; {kept}")


def save(ctx: Context, path: Path | None = None) -> None:
    """Write last.pth (rank 0) after checking every loss so far was finite."""
    check_finite(ctx)
    if ctx.rank == 0:
        ckpt_io.save_training_state(
            path or ctx.run_dir / rundir.LAST, model=ctx.model, optimizer=ctx.optimizer,
            subspace_optimizer=ctx.subspace_optimizer, scaler=ctx.scaler, step=ctx.step,
            epoch=ctx.step // ctx.steps_per_epoch, config=to_dict(ctx.cfg), world_size=ctx.world,
            extra={**ctx.log.state(), "bad_seen": sorted(ctx.bad_images.seen)})
    ctx.log.saved()
    ctx.saved_step = ctx.step


def knn_eval(ctx: Context) -> float | None:
    """kNN top-1 (%) of the current backbone (rank 0; None when the monitor is off)."""
    if ctx.knn is None:
        return None
    with ctx.autocast() if ctx.device.type == "cuda" else contextlib.nullcontext():
        return ctx.knn.evaluate(ctx.model.backbone, ctx.device, channels_last=ctx.cfg.runtime.channels_last)


def train_step(ctx: Context, views: torch.Tensor, spatial: torch.Tensor) -> dict:
    """One optimisation step on a batch of uint8 view pairs (eq. 6)."""
    lr = learning_rate(ctx.cfg.optim, ctx.step, ctx.steps_per_epoch)
    set_lr(ctx.optimizer, lr)
    views = views.to(ctx.device, non_blocking=True)
    spatial = spatial.to(ctx.device, non_blocking=True)
    gen = torch.Generator(device=ctx.device).manual_seed(sample_seed(1, ctx.cfg.seed, ctx.step, ctx.rank))
    with torch.no_grad():
        batch = ctx.photometric(views, spatial, generator=gen)
    if ctx.cfg.runtime.channels_last:
        batch.x1 = batch.x1.contiguous(memory_format=torch.channels_last)
        batch.x2 = batch.x2.contiguous(memory_format=torch.channels_last)
    with ctx.autocast():
        out = ctx.forward(batch)
    optimizers = [o for o in (ctx.optimizer, ctx.subspace_optimizer) if o is not None]
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    if ctx.scaler is not None:
        ctx.scaler.scale(out["loss"]).backward()
        for opt in optimizers:
            ctx.scaler.step(opt)
        ctx.scaler.update()
    else:
        out["loss"].backward()
        for opt in optimizers:
            opt.step()
    ctx.step += 1
    # the first non-finite step, kept on the device: a .item() per step would sync the GPU
    step = torch.full((), ctx.step, device=ctx.device)
    first = ctx.first_nonfinite if ctx.first_nonfinite is not None else torch.full_like(step, -1)
    ctx.first_nonfinite = torch.where((first < 0) & ~torch.isfinite(out["loss"].detach()), step, first)
    out["lr"] = lr
    return out


def interrupted(ctx: Context) -> bool:
    """True once any process got a stop signal (all ranks agree, so DDP steps stay matched)."""
    if ctx.world > 1:
        flag = torch.tensor([ctx.interrupted], device=ctx.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        ctx.interrupted = int(flag.item())
    return bool(ctx.interrupted)


def train(ctx: Context) -> None:
    """The loop: epochs of steps, kNN + summary row + last.pth at each epoch end."""
    cfg, spe = ctx.cfg, ctx.steps_per_epoch
    total = cfg.optim.epochs * spe
    if ctx.step == 0:
        ctx.log.knn(0, 0, knn_eval(ctx))  # the random-initialisation floor
    stop_at = min(total, cfg.runtime.stop_after_steps or total)
    ctx.model.train()
    # SIGINT/SIGTERM set ctx.interrupted: the loop stops at the next step boundary, saves and exits
    # 128 + signal (130/143) instead of losing the work since the last save
    with stop_signals(lambda signum: setattr(ctx, "interrupted", signum)):
        while ctx.step < stop_at and not interrupted(ctx):
            _train_epoch(ctx, stop_at)
    if ctx.interrupted:
        save(ctx)
        if ctx.rank == 0:
            print(f"interrupted at step {ctx.step}; resume with --resume auto", file=sys.stderr, flush=True)


def _train_epoch(ctx: Context, stop_at: int) -> None:
    """Steps until the epoch ends, ``stop_at`` or a signal; then the epoch-end kNN, summary and saves."""
    cfg, spe = ctx.cfg, ctx.steps_per_epoch
    epoch, offset = divmod(ctx.step, spe)
    ctx.sampler.set_epoch(epoch, start=offset * (cfg.optim.batch_size // ctx.world))
    bar = tqdm(total=spe, initial=offset, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
               disable=ctx.rank != 0 or not cfg.runtime.progress, dynamic_ncols=True, leave=False)
    ctx.log.begin_epoch()
    try:
        for views, spatial, bad in ctx.loader:
            out = train_step(ctx, views, spatial)
            ctx.bad_images.count(bad)
            if ctx.step % cfg.runtime.log_every == 0:
                check_finite(ctx)
            ctx.log.step(ctx.step, epoch, out, views.shape[0] * ctx.world, ctx.model.aug_names,
                         cfg.runtime.log_every, bar)
            if ctx.step % spe and interrupted(ctx):  # at an epoch end, the epoch's work comes first
                break
            due = ctx.log.minutes_since_save() >= cfg.runtime.save_every_min or ctx.step == stop_at
            if due and ctx.step % spe:  # at an epoch end the save follows the epoch's summary row
                save(ctx)
            if ctx.step >= stop_at:
                break
    except RuntimeError:
        if not ctx.interrupted:  # Ctrl-C also reaches the DataLoader workers, which then exit
            raise
    bar.close()
    if ctx.interrupted:
        return
    if ctx.step % spe == 0:  # a full epoch ended
        done = ctx.step // spe
        every = cfg.knn.every
        acc = knn_eval(ctx) if (every and done % every == 0) or done == cfg.optim.epochs else None
        ctx.log.end_epoch(done, ctx.step, learning_rate(cfg.optim, ctx.step - 1, spe), acc,
                          len(ctx.bad_images.seen))
        ctx.bad_images.seen.clear()
        save(ctx)
        if ctx.rank == 0:
            torch_save_atomic(ctx.run_dir / rundir.BACKBONE, ckpt_io.backbone_state(ctx.model.backbone))


def finish(ctx: Context) -> None:
    """Exports at the end of training: backbone.pth and mast_state.pth (with the held-out pass)."""
    if ctx.rank != 0:
        return
    torch_save_atomic(ctx.run_dir / rundir.BACKBONE, ckpt_io.backbone_state(ctx.model.backbone))
    state = ctx.model.mast_state()
    if ctx.knn is not None:
        files, root, source = ctx.knn.test_files, Path(ctx.cfg.knn.root) / "test", "knn.root test split"
    else:
        files, root, source = ctx.loader.dataset.files, Path(ctx.cfg.data.root), "data.root (seen in training)"
    state["heldout"] = heldout_pass(ctx.model, ctx.photometric, files, root, SpatialTwoView(ctx.cfg.augment),
                                    ctx.cfg.data.heldout_pairs, ctx.cfg.seed, ctx.device, source)
    state["config"] = to_dict(ctx.cfg)
    torch_save_atomic(ctx.run_dir / rundir.MAST_STATE, state)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mast.pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo", help="preset (demo, stl10_r18, imagenet_r50) or a YAML file")
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="continue from OUT_DIR/NAME/last.pth (auto) or from PATH")
    parser.add_argument("--name", default=None, help="run name (directory under out_dir); default: the preset's")
    parser.add_argument("--no-tensorboard", action="store_true",
                        help="write no TensorBoard events (OUT_DIR/NAME/tensorboard/); metrics.jsonl is written either way")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. optim.epochs=10 method=vicreg")
    add_launcher_args(parser, distributed=True)
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; user errors are one line on stderr (exit 2), a diverged run exits 1."""
    args = parse_args(argv)
    try:
        overrides = list(args.overrides) + ([f"name={args.name}"] if args.name else [])
        cfg = load_config(args.config, overrides)
        if args.launcher == "slurm":  # validated here; the job runs this command without the launcher options
            job_argv = ["--config", args.config, *(["--resume", args.resume] if args.resume else []),
                        *(["--name", args.name] if args.name else []),
                        *(["--no-tensorboard"] if args.no_tensorboard else []), *args.overrides]
            from mast.pretrain_submit import submit_pretraining  # the job runner only when submitting

            return submit_pretraining(args, job_argv, Path(cfg.out_dir) / cfg.name)
        ctx = setup(cfg, args.resume, tensorboard=not args.no_tensorboard)
        start = time.time()
        try:
            train(ctx)
        finally:  # the events written so far reach the disk, also when the run stops
            ctx.log.close()
        if ctx.interrupted:
            return 128 + ctx.interrupted
        if ctx.step >= cfg.optim.epochs * ctx.steps_per_epoch:
            finish(ctx)
        if ctx.rank == 0:
            print(f"{ctx.run_dir}: {ctx.step} steps in {time.time() - start:.0f}s; {ctx.log.describe()}")
        return 0
    except (ConfigError, DatasetError, ckpt_io.ResumeError, FolderBusyError, DiskFullError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # outside the loop (setup, exports): last.pth is as it was
        print("interrupted outside the training loop; the last saved checkpoint is kept", file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
