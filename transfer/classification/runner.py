"""ImageNet linear and semi-supervised classification (PROTOCOLS.md "ImageNet linear and semi-supervised"),
Places205 and iNat18 linear (PROTOCOLS.md "Places205 and iNat18 linear": VISSL's benchmark configs).

    python -m transfer.classification --ckpt X.pth --out DIR --data-root IMAGENET
        [--protocol linear|semisup_1pct|semisup_10pct|linear_places205|linear_inat18 | --config FILE]
        [--launcher none|pytorch|slurm] [--num-gpus N] [--cfg-options k=v ...] [--seeds 0 1 2] [--smoke] [--resume] [--force]

VICReg's ``evaluate.py`` protocol on mmpretrain's Runner: read the checkpoint
(``transfer.backbones.load``, tensors only), check the config's ResNet against it,
map the ImageNet on disk to ImageFolder's class indices (``transfer.imagenet``; either
layout; the shipped 1 %/10 % list, every listed file checked), convert the backbone to
``DIR/backbone_mmpretrain.pth``, build ``ImageClassifier`` + ``LinearClsHead``, verify that every
backbone weight was loaded, and for each seed (``--seeds``, one Runner each in ``DIR/seed_S``,
:mod:`transfer.classification.seeds`) train, validate after every epoch; then write ``DIR/record.json``:
the last epoch's top-1/top-5 (the headline, mean over seeds) with 95 % intervals by resampling validation
images (and seeds, for several), each seed's numbers, the best over epochs labelled as chosen on the
validation set, every epoch's numbers, and in linear mode the check that no backbone tensor or BatchNorm
statistic changed. ``--resume`` continues each seed from the Runner's own checkpoint in ``DIR/seed_S/work``
(a finished seed is read back, not rerun). Exit codes: 0 ok, 1 failed, 2 usage, 3 skipped (no dataset).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from plumbing.atomic import write_text_atomic
from transfer.backbones.info import CheckpointInfo, add_backbone_arg
from transfer.mmengine_task import add_runner_args, check_command, launch, load_runner_config, record_engine_part, \
    set_threads
from transfer.records import EXIT_USAGE, TaskRun

CONFIG_DIR = Path(__file__).resolve().parents[1] / "mmpretrain_configs"
PROTOCOLS = {
    "linear": CONFIG_DIR / "resnet50_linear_imagenet_vicreg.py",
    "semisup_1pct": CONFIG_DIR / "resnet50_semisup_1pct_imagenet_vicreg.py",
    "semisup_10pct": CONFIG_DIR / "resnet50_semisup_10pct_imagenet_vicreg.py",
    # VISSL's linear transfer benchmarks (frozen trunk, res5 eval_mlp head; PROTOCOLS.md "Places205 and iNat18")
    "linear_places205": CONFIG_DIR / "resnet50_linear_places205_vissl.py",
    "linear_inat18": CONFIG_DIR / "resnet50_linear_inat18_vissl.py",
}
SMOKE_SIDE = 32  # --smoke: crops of 32 px from images resized to 36 px


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m transfer.classification", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="SSL checkpoint (any format transfer.backbones reads)")
    p.add_argument("--out", required=True, help="output directory (record.json, train.log, mmpretrain_config.py)")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="linear",
                   help="VICReg evaluate.py protocol (ImageNet) or VISSL linear benchmark (Places205, iNat18)")
    p.add_argument("--config", help="mmpretrain config file (default: the --protocol's)")
    p.add_argument("--scale", choices=("paper", "demo"), default="paper",
                   help="paper: the protocol as published; demo: a *_demo.py config on the synthetic twin")
    p.add_argument("--subset-file", help="--scale demo only: a subset list in SimCLR's format instead of the shipped "
                                         "sha256-checked ones (the synthetic twin's imagenet_like/1percent.txt)")
    p.add_argument("--data-root", help="ImageNet root (train/ + val/, or ILSVRC/Data/CLS-LOC + LOC_val_solution.csv); "
                   "Places205 / iNat18 root in its official layout (transfer/vissl_datasets.py)")
    p.add_argument("--seeds", type=int, nargs="+", help="one Runner per seed in DIR/seed_S; the record holds each and "
                   "their mean, std and interval (default: --seed; --smoke keeps the first)")
    add_runner_args(p, "train_cfg.max_epochs=2",
                    "pipeline check: 2 iterations, 1 epoch, 32 px crops, global batch 2, no workers, sizes unchecked")
    add_backbone_arg(p)
    return p


def config_path(args: argparse.Namespace) -> Path:
    return Path(args.config) if args.config else PROTOCOLS[args.protocol]


def load_config(args: argparse.Namespace, info: CheckpointInfo, check: Any = None) -> Any:
    """Read the config, apply the command line, check its backbone against ``info`` (``check``), plan the batch."""
    from transfer.backbones.resnet.mmpretrain import check_backbone_cfg
    from transfer.classification.data import set_data_root

    path = config_path(args)

    def adapt(cfg: Any) -> None:
        if args.data_root:
            set_data_root(cfg, args.data_root)
        if args.subset_file:
            cfg.update(subset=None, subset_file=str(Path(args.subset_file).resolve()), subset_file_from_cli=True)
        cfg.depth_notes = (check or check_backbone_cfg)(cfg, info, path.name)
        if args.smoke:
            shrink_for_smoke(cfg)

    def plan_batch(cfg: Any, world: int, per_gpu_cap: int | None) -> dict[str, int]:
        plan = apply_batch(cfg, world, per_gpu_cap)
        cfg.val_dataloader.batch_size = cfg.test_dataloader.batch_size = plan["per_gpu"]
        return plan

    cfg = load_runner_config(args, path, adapt, plan_batch)
    import torch

    if not torch.cuda.is_available():  # nothing to pin memory for (torch warns on every loader otherwise)
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            cfg[loader].pin_memory = False
    return cfg


def apply_batch(cfg: Any, world: int, max_per_gpu: int | None) -> dict[str, int]:
    """The protocol's global batch on ``world`` processes: per-process batch and gradient accumulation
    (the smallest accumulation with ``global = per_gpu * world * accumulation``). Epoch-based training has
    no iteration counts to stretch: an epoch is the same images whatever the split."""
    total = int(cfg.global_batch)
    for accumulation in range(1, total + 1):
        share, rest = divmod(total, world * accumulation)
        if share == 0:
            break
        if rest == 0 and (max_per_gpu is None or share <= max_per_gpu):
            cfg.train_dataloader.batch_size = share
            if accumulation > 1:
                cfg.optim_wrapper.accumulative_counts = accumulation
            return dict(world_size=world, per_gpu=share, accumulation=accumulation, effective=total)
    raise ValueError(f"global batch {total} cannot be split over {world} processes"
                     + (f" with at most {max_per_gpu} per process" if max_per_gpu else ""))


def shrink_for_smoke(cfg: Any, side: int = SMOKE_SIDE, iters: int = 2) -> None:
    """A pipeline check: one epoch of at most ``iters`` iterations on ``side``-px crops (the config's
    ``smoke_side`` where its head needs a size), global batch 2."""
    side = int(cfg.get("smoke_side", side))
    cfg.global_batch = 2
    for pipeline in (cfg.train_dataloader.dataset.pipeline, cfg.val_dataloader.dataset.pipeline,
                     cfg.test_dataloader.dataset.pipeline):
        for step in pipeline:
            if step["type"] in ("RandomResizedCrop", "CenterCrop"):
                step["scale" if "scale" in step else "crop_size"] = side
            elif step["type"] == "ResizeEdge":
                step["scale"] = side + side // 8
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].update(num_workers=0, persistent_workers=False)
    cfg.train_cfg.update(max_epochs=1)
    cfg.param_scheduler = [dict(type="CosineAnnealingLR", T_max=1, eta_min=0.0, by_epoch=True, begin=0, end=1)]
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=1)
    cfg.smoke_images = iters * cfg.global_batch  # data.prepare_data keeps this many training images
    cfg.env_cfg = dict(cfg.get("env_cfg") or {}, cudnn_benchmark=False)


def attach_checkpoint(cfg: Any, converted: Path) -> None:
    """Load ``converted`` the mmengine way: the backbone's ``init_cfg`` (PretrainedInit)."""
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(converted), prefix="backbone.")


def run(args: argparse.Namespace, task: TaskRun | None) -> None:
    """The whole task; ``task`` is None on ranks > 0 (only rank 0 writes the record)."""
    from transfer.backbones import load
    from transfer.backbones.resnet.load import refuse_cifar_stem
    from transfer.backbones.resnet.mmpretrain import to_mmpretrain_file
    from transfer.classification.data import prepare_data
    from transfer.classification.engine import require_mmpretrain
    from transfer.classification.seeds import record_group, run_seeds

    require_mmpretrain()
    set_threads(args.threads)
    state, info = load(args.ckpt, args.backbone)
    if info.family == "vit":  # DINO eval_linear / MAE main_linprobe, or one line (transfer/classification/vit.py)
        from transfer.classification.vit import run_vit
        return run_vit(args, task, state, info, load_config)
    refuse_cifar_stem(info, "mmpretrain")
    cfg = load_config(args, info)
    cfg.resume = bool(args.resume)
    out = Path(args.out)
    data = prepare_data(cfg, out, args.smoke)
    record_engine_part(task, cfg, info, _dataset_name(cfg), data=data)
    converted = to_mmpretrain_file(state, info, out)
    attach_checkpoint(cfg, converted)
    if task is not None:
        write_text_atomic(out / "mmpretrain_config.py", cfg.pretty_text)
    results = run_seeds(cfg, converted, out, args.seeds, args.resume, frozen=cfg.get("protocol") == "linear",
                        ckpt_sha256=info.sha256, writes=task is not None)
    if task is not None:
        record_group(task, results)
        task.record["config"] = cfg.to_dict()


def _dataset_name(cfg: Any) -> str:
    subset = cfg.get("subset")
    return f"imagenet_{subset.replace('percent', 'pct')}" if subset else str(cfg.get("dataset_name") or "imagenet")


def resolve_seeds(args: argparse.Namespace, argv: list[str]) -> bool:
    """``args.seeds`` from ``--seeds`` or ``--seed`` (not both), each once; ``--smoke`` keeps the first.
    False after a one-line usage error."""
    if args.seeds is None:
        args.seeds = [args.seed]
    elif any(a == "--seed" or a.startswith("--seed=") for a in argv):
        print("classification: --seed and --seeds: give one (--seeds 0 for a single run)", file=sys.stderr)
        return False
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        print(f"classification: --seeds {' '.join(map(str, args.seeds))}: expected distinct seeds >= 0",
              file=sys.stderr)
        return False
    if args.smoke:  # a pipeline check, as detection's: one seed
        args.seeds = args.seeds[:1]
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    argv = check_command(args, argv, "classification", f"transfer/mmpretrain_configs/{PROTOCOLS['linear'].name}")
    if argv is None:
        return EXIT_USAGE
    path = config_path(args)
    if not resolve_seeds(args, argv):
        return EXIT_USAGE
    if args.subset_file and args.scale != "demo":
        print("error: --subset-file is for --scale demo; the paper protocols read the shipped, sha256-checked "
              "SimCLR lists", file=sys.stderr)
        return EXIT_USAGE
    scale = "smoke" if args.smoke else (f"{args.scale}+overrides" if args.cfg_options else args.scale)

    def start_task() -> TaskRun:
        return TaskRun(task="classification", dataset=path.stem, scale=scale, out_dir=args.out, ckpt_info=None,
                       config={"config_file": str(path), "protocol": args.protocol, "backbone": args.backbone,
                               "subset_file": args.subset_file},
                       seeds=args.seeds, force=args.force or args.resume)

    return launch(args, argv, "transfer.classification", start_task, run)
