"""Detection / instance-segmentation transfer on detectron2 (PROTOCOLS.md "Detection").

    python -m transfer.detection --ckpt X --config detectron_configs/coco_R_50_C4_1x.yaml --out DIR
        [--num-gpus N --num-machines M --machine-rank R --dist-url U] [--seeds 1 2 3]
        [--data-root ROOT] [--scale demo|paper] [--smoke] [--force] [--resume] [KEY VALUE ...]
    python -m transfer.detection --ckpt VIT.pth --config detectron_configs/vitdet/mask_rcnn_vitdet_b_100ep.py
        --out DIR [... as above] [key=value ...]

A ResNet checkpoint takes a YAML config; a ViT checkpoint takes a ViTDet LazyConfig (``.py``), run by
:mod:`transfer.detection.vitdet_train` (the other pairings are refused in one line).

Steps: read the checkpoint (any accepted wrapping, :func:`transfer.backbones.load`), convert it to a
detectron2 names in memory (in every training process: no pickle is read), resolve the config (``_BASE_`` chain, then
``KEY VALUE`` overrides, then ``MODEL.RESNETS.DEPTH`` from the checkpoint and SyncBN -> BN when
there is one process), check that every dataset is on disk, then for each seed train and evaluate
with detectron2's ``DefaultTrainer`` under its ``launch``. Weights are verified after loading
(:mod:`transfer.backbones.resnet.detectron2`). ``DIR/record.json`` gets bbox/segm AP, AP50, AP75 (VOC: AP, AP50,
AP75) as the mean over seeds, with their std; ``DIR/log.txt`` the log; ``DIR/config.yaml`` and
``DIR/seed_S/config.yaml`` the resolved configs. ``--resume`` continues each seed from its own last
checkpoint in ``DIR/seed_S`` (saved every ``SOLVER.CHECKPOINT_PERIOD`` iterations with --save-model,
the paper default; :mod:`transfer.detection.resume_checkpoint`); a seed without one starts from the weights.
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from plumbing.atomic import write_text_atomic
from transfer.backbones import load
from transfer.backbones.info import CheckpointInfo, add_backbone_arg
from transfer.backbones.resnet.detectron2 import MAPPING_VERSION
from transfer.backbones.resnet.load import refuse_cifar_stem
from transfer.detection.data import SYNTHETIC_SPLITS, prepare_datasets, synthetic_num_classes
from transfer.detection.resume_checkpoint import clear_resume_point
from transfer.detection.train import RESULT_FILE, WeightsSource, setup_logging, train_and_evaluate
from transfer.detection.heads import register_heads
from transfer.detection.vitdet import SMOKE_LAZY_OPTS, is_lazy_config, load_lazy_config
from transfer.engines import sync_norms_to_bn
from transfer.records import EXIT_USAGE, TaskFailed, TaskRun
from plumbing import project_path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = {"demo": "detectron_configs/demo_synthetic_R_18_FPN.yaml",
                  "paper": "detectron_configs/coco_R_50_C4_1x.yaml"}
AP_KEYS = ("AP", "AP50", "AP75")
# --smoke: a pipeline check that ends on a CPU in about a minute with real predictions: 2 iterations on
# tiny images, precise-BN off (its 200 iterations dominated), every detection kept (score threshold 0,
# so the evaluator has predictions), one seed, no model file, no data-loader workers. The user's
# overrides come after these and win.
SMOKE_OPTS = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.0001",
              "SOLVER.STEPS", "(1,)", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "100000",
              "SOLVER.CLIP_GRADIENTS.ENABLED", "True", "INPUT.MIN_SIZE_TRAIN", "(64,)",
              "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
              "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "8",
              "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "8",
              "MODEL.RPN.PRE_NMS_TOPK_TEST", "32", "MODEL.RPN.POST_NMS_TOPK_TEST", "4",
              "TEST.DETECTIONS_PER_IMAGE", "4", "TEST.PRECISE_BN.ENABLED", "False", "TEST.EVAL_PERIOD", "0",
              "DATALOADER.NUM_WORKERS", "0"]
_CFG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
_LAZY_KEY = re.compile(r"^[a-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+=")  # LazyConfig: train.max_iter=100
log = logging.getLogger("transfer.detection")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate detectron2 ``KEY VALUE`` overrides (``SOLVER.MAX_ITER 100``) from the options.

    Done before argparse so ``--seeds 1 2 3 SOLVER.MAX_ITER 100`` works: argparse would read the
    key as a fourth seed.
    """
    rest, opts, i = [], [], 0
    while i < len(argv):
        if _CFG_KEY.match(argv[i]):
            opts += argv[i:i + 2]
            i += 2
        elif _LAZY_KEY.match(argv[i]):
            opts.append(argv[i])
            i += 1
        else:
            rest.append(argv[i])
            i += 1
    return rest, opts


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m transfer.detection`` (run_all checks suite args against them)."""
    p = argparse.ArgumentParser(prog="python -m transfer.detection", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True,
                   help="pretrained ResNet (YAML config) or ViT (ViTDet .py config) checkpoint")
    p.add_argument("--out", required=True, help="output directory (record.json, log.txt, configs)")
    p.add_argument("--config",
                   help=f"detectron2 YAML, or a ViTDet LazyConfig .py (default by --scale: {DEFAULT_CONFIG})")
    p.add_argument("--scale", choices=("demo", "paper"), default=None,
                   help="protocol (default: demo for a demo_* config or no --config, else paper)")
    p.add_argument("--smoke", action="store_true", help="pipeline check: 2 iterations on tiny images, precise-BN "
                   "off, score threshold 0, one seed (about a minute on a CPU; recorded as scale: smoke)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed; mean and std recorded")
    p.add_argument("--data-root", default="data/synthetic", help="synthetic data root (holds scenes/)")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per machine, one per GPU (1 on a CPU)")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument("--dist-url", default="auto", help="e.g. tcp://HOST:PORT; auto = free local port")
    p.add_argument("--save-model", action=argparse.BooleanOptionalAction, default=None,
                   help="keep detectron2's model_final.pth (default: paper yes, demo no)")
    p.add_argument("--force", action="store_true", help="replace an existing DIR/record.json")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                   help="no TensorBoard event files (detectron2's TensorboardXWriter) in DIR/seed_S")
    p.add_argument("--resume", action="store_true", help="continue each seed from its last checkpoint in "
                   "DIR/seed_S (detectron2's last_checkpoint, read as data); replaces DIR/record.json")
    add_backbone_arg(p)
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per process (0: torch's default); 1 avoids oversubscribing a small CPU")
    p.epilog = ("KEY VALUE ...: detectron2 config overrides, anywhere on the line (e.g. SOLVER.MAX_ITER 100); "
                "key=value for a LazyConfig (e.g. train.max_iter=100)")
    return p


def _refuse(message: str) -> None:
    """A usage error: one line, exit code 2, before anything starts (also before any worker process)."""
    print(f"detection: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = build_parser()
    args_only, opts = split_overrides(sys.argv[1:] if argv is None else list(argv))
    args = p.parse_args(args_only)
    args.opts = opts
    if args.scale is None:
        args.scale = "demo" if args.config is None or Path(args.config).name.startswith("demo_") else "paper"
    args.config = str(project_path(args.config or DEFAULT_CONFIG[args.scale]))
    if not Path(args.config).is_file():
        _refuse(f"--config {args.config}: no such file (expected a YAML path, or a name under {REPO}, "
                "e.g. detectron_configs/coco_R_50_FPN_1x.yaml)")
    lazy = is_lazy_config(args.config)
    if lazy and args.resume:
        _refuse(f"--resume: {Path(args.config).name} is a ViTDet LazyConfig; resuming it is not supported yet "
                "(run it again without --resume, or with --force to start over)")
    if args.smoke:
        args.opts = (SMOKE_LAZY_OPTS if lazy else SMOKE_OPTS) + args.opts
        args.seeds, args.save_model = args.seeds[:1], False
    if lazy and any("=" not in o for o in args.opts):
        _refuse(f"{Path(args.config).name} is a LazyConfig: overrides are key=value (e.g. train.max_iter=100), "
                f"got {args.opts}")
    if not lazy and any("=" in o for o in args.opts[::2]):
        _refuse(f"{Path(args.config).name} is a YAML config: overrides are KEY VALUE pairs, got {args.opts}")
    if not lazy and len(args.opts) % 2:
        _refuse(f"overrides must be KEY VALUE pairs, got {args.opts}")
    if min(args.num_gpus, args.num_machines) < 1:
        _refuse("--num-gpus and --num-machines must be >= 1")
    if args.num_gpus > 1 and not _has_cuda():
        _refuse(f"--num-gpus {args.num_gpus}: no GPU here; detectron2's trainer gives DistributedDataParallel "
                "device ids, which CPU processes cannot take: use --num-gpus 1 on a CPU")
    return args


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_config(path: str, opts: list[str]) -> Any:
    """detectron2 ``CfgNode`` from ``path`` (with its ``_BASE_`` chain) and the overrides."""
    register_heads()
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(path, allow_unsafe=False)  # safe YAML only: a python tag in a config never runs
    cfg.merge_from_list(list(opts))
    for key in ("TRAIN", "TEST"):
        names = cfg.DATASETS[key]
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"DATASETS.{key} {names!r}: expected a non-empty tuple of registered dataset names, "
                             "e.g. ('scenes_val',)")
    return cfg


def sync_norm_fallback(cfg: Any) -> list[str]:
    """Replace SyncBN-type norms of ``cfg.MODEL`` by BN; returns what changed."""
    return sync_norms_to_bn(cfg.MODEL, "NORM", "MODEL.")


def resolve_config(cfg: Any, args: argparse.Namespace, info: CheckpointInfo) -> list[str]:
    """Fill in what comes from the checkpoint and the launch; returns notes for the record."""
    depth = int(info.arch.removeprefix("resnet"))
    opts = dict(zip(args.opts[::2], args.opts[1::2]))
    if "MODEL.RESNETS.DEPTH" in opts and int(opts["MODEL.RESNETS.DEPTH"]) != depth:
        raise ValueError(f"MODEL.RESNETS.DEPTH {opts['MODEL.RESNETS.DEPTH']} contradicts the checkpoint ({info.arch})")
    if "MODEL.WEIGHTS" in opts:
        raise ValueError("MODEL.WEIGHTS is set by the runner from --ckpt (converted and verified); drop the override")
    if depth < 50 and cfg.MODEL.ROI_HEADS.NAME.startswith("Res5"):
        raise ValueError(f"{args.config} puts a bottleneck res5 in its C4 ROI head; {info.arch} has basic "
                         "blocks: use an FPN config (e.g. detectron_configs/demo_synthetic_R_18_FPN.yaml)")
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.WEIGHTS = ""  # nothing for detectron2 to unpickle: every process converts --ckpt in memory
    if "MODEL.DEVICE" not in opts:
        import torch

        cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    notes = []
    if args.num_gpus * args.num_machines == 1:
        notes += sync_norm_fallback(cfg)
    return notes


def check_synthetic_config(cfg: Any, data_root: str) -> None:
    """The config fits the synthetic scenes (class count, RLE masks); call after the data check."""
    if not any(n in SYNTHETIC_SPLITS for n in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)):
        return
    n = synthetic_num_classes(data_root)
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES != n:
        raise ValueError(f"MODEL.ROI_HEADS.NUM_CLASSES {cfg.MODEL.ROI_HEADS.NUM_CLASSES} != {n} "
                         f"categories in {data_root}/scenes")
    if cfg.MODEL.MASK_ON and cfg.INPUT.MASK_FORMAT != "bitmask":
        raise ValueError("the synthetic scenes store RLE masks: set INPUT.MASK_FORMAT bitmask")


def scene_metrics(results: dict, voc: bool) -> dict[str, float]:
    """Record metric names (contract): COCO ``bbox_AP`` ... ``segm_AP75``; VOC ``AP AP50 AP75``."""
    if voc:
        return {k: float(results["bbox"][k]) for k in AP_KEYS}
    return {f"{task}_{k}": float(results[task][k]) for task in ("bbox", "segm") if task in results for k in AP_KEYS}


def run_seed(cfg: Any, seed: int, args: argparse.Namespace, out: Path, save_model: bool, sha256: str) -> dict:
    """Train + evaluate one seed under detectron2's ``launch``; returns detectron2's results dict."""
    from detectron2.engine import launch

    cfg = cfg.clone()
    cfg.SEED = seed
    cfg.OUTPUT_DIR = str(out / f"seed_{seed}")
    cfg.freeze()
    seed_dir = Path(cfg.OUTPUT_DIR)
    seed_dir.mkdir(parents=True, exist_ok=True)
    (seed_dir / RESULT_FILE).unlink(missing_ok=True)
    if not args.resume:  # a fresh start: a later --resume must never continue an earlier attempt's file
        clear_resume_point(seed_dir)
    write_text_atomic(seed_dir / "config.yaml", cfg.dump())
    uses_synthetic = any(n in SYNTHETIC_SPLITS for n in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST))
    data_root = str(Path(args.data_root).resolve()) if uses_synthetic else None
    error = None
    try:
        launch(train_and_evaluate, args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url,
               args=(cfg, data_root, save_model, str(out / "log.txt"), WeightsSource(args.ckpt, args.backbone, sha256),
                     args.resume, args.tensorboard))
    except Exception as exc:  # noqa: BLE001 - the worker's own one-line reason is preferred below
        error = exc
    result = _read_result(seed_dir)
    if result.get("status") == "ok":
        return result["results"]
    if args.machine_rank != 0 and error is None:
        return {}
    reason = result.get("error") or (f"{type(error).__name__}: {error}" if error else "no result written")
    raise TaskFailed(f"seed {seed}: " + " ".join(str(reason).split()))


def _read_result(seed_dir: Path) -> dict:
    import json

    try:
        return json.loads((seed_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _aggregate(per_seed: dict[int, dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    names = list(next(iter(per_seed.values())))
    mean = {k: statistics.fmean(m[k] for m in per_seed.values()) for k in names}
    std = {k: statistics.stdev(m[k] for m in per_seed.values()) for k in names} if len(per_seed) > 1 else {}
    return mean, std


def execute(run: TaskRun, cfg: Any, args: argparse.Namespace) -> None:
    """Everything inside the record: checkpoint, conversion, datasets, seeds, metrics."""
    out = Path(args.out)
    setup_logging(out / "log.txt", rank=0)
    state, info = load(args.ckpt, args.backbone)
    check_config_family(info, args.config)
    if info.family == "vit":
        return execute_vitdet(run, cfg, args, info)
    run.extra.update(checkpoint=asdict(info), method=info.method)
    refuse_cifar_stem(info, "detectron2")
    notes = resolve_config(cfg, args, info)
    prepare_datasets((*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST), args.data_root)
    check_synthetic_config(cfg, args.data_root)
    for note in notes:
        log.info("one process: %s", note)
    run.config.update(weights=f"{info.path} converted in memory ({MAPPING_VERSION})", mapping_version=MAPPING_VERSION,
                      norm_fallback=notes,
                      detectron2=yaml.safe_load(cfg.dump()))
    write_text_atomic(out / "detectron2_config.yaml", cfg.dump())
    save_model = args.save_model if args.save_model is not None else args.scale == "paper"
    voc = cfg.DATASETS.TEST[0].startswith("voc")
    per_seed = {}
    for seed in args.seeds:
        results = run_seed(cfg, seed, args, out, save_model, info.sha256)
        if not results:  # a non-zero machine rank: rank 0 writes the numbers
            return
        per_seed[seed] = scene_metrics(results, voc)
        resumed = _read_result(out / f"seed_{seed}").get("resumed")
        if resumed:
            run.extra.setdefault("resumed", {})[str(seed)] = resumed
        log.info("seed %d: %s", seed, per_seed[seed])
    mean, std = _aggregate(per_seed)
    run.metrics.update(mean)
    run.metrics_std.update(std)
    run.extra["per_seed"] = {str(s): m for s, m in per_seed.items()}


def check_config_family(info: CheckpointInfo, config: str) -> None:
    """The config's kind (a ViTDet LazyConfig ``.py`` or a ResNet YAML) must take the checkpoint's family."""
    lazy = is_lazy_config(config)
    if info.family != ("vit" if lazy else "resnet"):
        held = "a Vision Transformer" if info.family == "vit" else "a ResNet"
        use = "a ResNet YAML config (detectron_configs/*.yaml)" if lazy else "a ViTDet config (detectron_configs/vitdet/*.py)"
        raise ValueError(f"checkpoint {info.path} holds {held} ({info.arch}) and --config {Path(config).name} is a "
                         f"{'ViTDet' if lazy else 'ResNet'} config: use {use}")


def execute_vitdet(run: TaskRun, cfg: Any, args: argparse.Namespace, info: CheckpointInfo) -> None:
    """The ViTDet path (:mod:`transfer.detection.vitdet_train`): a ViT checkpoint and a LazyConfig."""
    from transfer.detection.vitdet import dataset_names, resolve_vitdet, vitdet_summary
    from transfer.detection.vitdet_train import VitdetJob, build_config, run_seed

    name = Path(args.config).name
    run.extra.update(checkpoint=asdict(info), method=info.method)
    resolved, notes = resolve_vitdet(cfg, info, f"config {name}", args.opts)
    names = dataset_names(cfg)
    prepare_datasets(names, args.data_root)
    uses_synthetic = any(n in SYNTHETIC_SPLITS for n in names)
    if uses_synthetic and cfg.model.roi_heads.num_classes != synthetic_num_classes(args.data_root):
        raise ValueError(f"model.roi_heads.num_classes {cfg.model.roi_heads.num_classes} != "
                         f"{synthetic_num_classes(args.data_root)} categories in {args.data_root}/scenes")
    save_model = args.save_model if args.save_model is not None else args.scale == "paper"
    job = VitdetJob(args.config, [*args.opts, *resolved], args.ckpt, args.backbone, info.sha256,
                    str(Path(args.data_root).resolve()) if uses_synthetic else None, save_model,
                    str(Path(args.out) / "log.txt"), 0, tensorboard=args.tensorboard)
    for note in notes:
        log.info("vitdet: %s", note)
    run.config.update(engine="detectron2 LazyConfig (ViTDet)", resolved_overrides=resolved, notes=notes,
                      vitdet=vitdet_summary(build_config(job)))
    per_seed, weights = {}, {}
    for seed in args.seeds:
        result = run_seed(job._replace(seed=seed), args)
        if not result:  # a non-zero machine rank: rank 0 writes the numbers
            return
        per_seed[seed], weights = scene_metrics(result["results"], voc=False), result["weights"]
        log.info("seed %d: %s", seed, per_seed[seed])
    mean, std = _aggregate(per_seed)
    run.metrics.update(mean)
    run.metrics_std.update(std)
    run.extra.update(per_seed={str(s): m for s, m in per_seed.items()}, vit_conversion=weights)


def dataset_label(cfg: Any) -> str:
    if not hasattr(cfg, "DATASETS"):  # a LazyConfig
        from transfer.detection.vitdet import dataset_names

        test = dataset_names(cfg)[-1]
        return "synthetic/scenes" if test in SYNTHETIC_SPLITS else test
    test = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "none"
    return "synthetic/scenes" if test in SYNTHETIC_SPLITS else test


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        lazy = is_lazy_config(args.config)
        cfg = load_lazy_config(args.config, args.opts) if lazy else load_config(args.config, args.opts)
    except Exception as exc:  # noqa: BLE001 - yacs raises KeyError/ValueError/AssertionError
        print(f"error: --config {args.config} with overrides {args.opts}: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    config = {"config_file": str(Path(args.config).resolve()), "overrides": args.opts, "seeds": args.seeds,
              "num_gpus": args.num_gpus, "num_machines": args.num_machines, "data_root": args.data_root,
              "backbone": args.backbone}
    try:
        # overrides change the protocol: a paper-scale run with any is labelled so (never a paper number)
        scale = "smoke" if args.smoke else "paper+overrides" if args.scale == "paper" and args.opts else args.scale
        run = TaskRun(task="detection", dataset=dataset_label(cfg), scale=scale, out_dir=args.out,
                      ckpt_info=None, config=config, seeds=args.seeds, force=args.force or args.resume)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.threads > 0:  # CPU runs only; spawned workers inherit it through OMP_NUM_THREADS
        import os

        import torch

        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    with run:
        execute(run, cfg, args)
    return run.exit_code
