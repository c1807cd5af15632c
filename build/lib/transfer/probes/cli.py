"""The CLI frame the three probes share: arguments, the result record, exit codes (contract "Task CLI")."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from plumbing.atomic import write_bytes_atomic
from transfer.backbones.info import CheckpointError, add_backbone_arg
from transfer.probes.features import FeatureError, FeatureExtractor, default_cache_dir
from transfer.records import EXIT_USAGE, TaskRun, TaskSkipped
from transfer.stats import LEVEL, N_BOOT, mean_interval

__all__ = ["add_common_args", "resolve_defaults", "dataset_name", "run_task", "record_scores", "record_class_avg",
           "check_disjoint", "default_cache_dir", "PREDICTIONS"]

PREDICTIONS = "predictions.npz"  # per-item scores next to record.json: {metric: float array}, no pickles


def _optional_int(value: str) -> int | None:
    """An int, or None for "" (a suite variable left empty)."""
    return int(value) if value.strip() else None


def _optional_count(value: str) -> int | None:
    """A positive int, or None for "" (``--vit-last-blocks 0`` would silently run as 1)."""
    number = _optional_int(value)
    if number is not None and number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive whole number (or empty for the default)")
    return number


def _stem_padding(value: str) -> int | None:
    """conv1 padding of a CIFAR stem: 0-3 (a 3x3 kernel), or None for ""."""
    number = _optional_int(value)
    if number is not None and not 0 <= number <= 3:
        raise argparse.ArgumentTypeError(f"{value!r}: expected 0, 1, 2 or 3 (a 3x3 conv1's padding)")
    return number


def _optional_str(value: str) -> str | None:
    return value if value.strip() else None


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="backbone checkpoint (any format transfer.backbones reads)")
    parser.add_argument("--data", required=True, help="dataset root: the download layout of --dataset NAME, "
                        "else <split>/<class>/<image> folders")
    parser.add_argument("--out", required=True, help="output directory for record.json and config.yaml")
    parser.add_argument("--scale", choices=["demo", "paper"], default=None,
                        help="protocol (default: paper for a --dataset registry name, else demo)")
    parser.add_argument("--dataset", default=None,
                        help="registry name (cifar10, cifar100, stl10, food101, pets, dtd, flowers102, aircraft, "
                             "caltech101, sun397, cub200, cars, mit67, fc100, plant_disease, voc07, places205, inat18): "
                             "read --data in that "
                             "dataset's download layout with its protocol splits; any other name only labels the "
                             "record (default: from --data)")
    parser.add_argument("--split-file", type=_optional_str, default=None,
                        help="AugSelf's splits/<dataset>.pth (index lists) for caltech101, sun397, cub200")
    parser.add_argument("--image-size", type=_optional_int, default=None,
                        help="CenterCrop size (default: the checkpoint's pretraining resolution; else 224, or an "
                             "error at --scale paper)")
    parser.add_argument("--normalize", type=_optional_str, default=None,
                        help="imagenet | stl10 | MEAN/STD (e.g. 0.43,0.42,0.39/0.27,0.26,0.27); default: the "
                             "checkpoint's pretraining statistics, else imagenet")
    parser.add_argument("--cache-dir", default=None, help="feature cache folder (default: $XDG_CACHE_HOME/mast/"
                        "features, else ~/.cache/mast/features; never the working directory)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the probes' solvers are many small ops, where one "
                             "thread per process measured 2-30x faster than two)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--force", action="store_true", help="replace an existing record.json in --out")
    add_backbone_arg(parser)
    parser.add_argument("--vit-pool", choices=["cls", "avg", "cls+avg"], default=None,
                        help="ViT features: class token, average patch token, or both (default: as the "
                             "checkpoint's codebase evaluates: DINO/iBOT/MoCo v3 cls, MAE avg, DINOv2 cls+avg)")
    parser.add_argument("--stem-padding", type=_stem_padding, default=None, metavar="N",
                        help="a CIFAR-stem ResNet's conv1 padding when the file does not say (solo-learn's saved "
                             "config does: 2 for its CIFAR models; lightly's: 1)")
    parser.add_argument("--vit-last-blocks", type=_optional_count, default=None,
                        help="ViT: concatenate the class tokens of the last N blocks (DINO eval_linear's "
                             "n_last_blocks; default 4 for DINO/iBOT ViT-S in the linear probe, else 1)")


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults that depend on other options: the protocol a registry dataset implies, the cache folder."""
    from transfer.probes.datasets import REGISTRY

    if args.scale is None:
        args.scale = "paper" if args.dataset in REGISTRY else "demo"
    if args.cache_dir is None:
        args.cache_dir = str(default_cache_dir())
    return args


def dataset_name(data: str | Path) -> str:
    """``synthetic/<task>`` for a task of the synthetic benchmark (ROOT/classification/<task>), else the folder name."""
    data = Path(data).resolve()
    return f"synthetic/{data.name}" if (data.parent.parent / "card.json").is_file() else data.name


def record_scores(run: TaskRun, metric: str, scores, unit: str) -> None:
    """Store ``metric`` = 100 · mean of per-item ``scores`` with its 95 % bootstrap interval (docs/STATISTICS.md).

    ``scores`` (1/0 correctness per test image, or accuracy per few-shot episode) are kept for
    ``predictions.npz``, so a report can pair two checkpoints item by item.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    iv = mean_interval(scores, n_boot=N_BOOT, seed=0)
    run.metrics[metric] = 100.0 * iv.value
    run.extra.setdefault("intervals", {})[metric] = {
        "lo": 100.0 * iv.lo, "hi": 100.0 * iv.hi, "level": LEVEL, "n_items": int(scores.size), "unit": unit,
        "method": f"percentile bootstrap over {unit}, {N_BOOT} resamples, seed 0"}
    run.item_scores[metric] = scores


def record_class_avg(run: TaskRun, metric: str, correct, labels, n_boot: int = N_BOOT) -> None:
    """Store ``metric`` = 100 · mean per-class recall, with its 95 % bootstrap interval.

    The interval resamples test items and recomputes the class average on each draw (classes
    missing from a draw are left out, as :func:`transfer.probes.linear.accuracy` does). The
    per-item scores kept for pairing are ``correct / (C · n_class)`` · N: their mean is the
    class average, so a report pairs two checkpoints item by item as for ``top1``.
    """
    correct = np.asarray(correct, dtype=np.float64).reshape(-1)
    _, inverse, counts = np.unique(np.asarray(labels).reshape(-1), return_inverse=True, return_counts=True)
    n, c = correct.size, counts.size
    value = float(np.mean(np.bincount(inverse, correct, c) / counts))
    rng, draws = np.random.default_rng(0), []
    for chunk in np.array_split(np.arange(n_boot), max(1, n_boot * n // 2_000_000)):
        idx = rng.integers(n, size=(chunk.size, n))
        cell = (np.arange(chunk.size)[:, None] * c + inverse[idx]).reshape(-1)
        hits = np.bincount(cell, correct[idx].reshape(-1), chunk.size * c).reshape(chunk.size, c)
        seen = np.bincount(cell, minlength=chunk.size * c).reshape(chunk.size, c)
        with np.errstate(invalid="ignore", divide="ignore"):
            draws.append(np.nanmean(np.where(seen > 0, hits / seen, np.nan), axis=1))
    lo, hi = np.quantile(np.concatenate(draws), [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    run.metrics[metric] = 100.0 * value
    run.extra.setdefault("intervals", {})[metric] = {
        "lo": 100.0 * lo, "hi": 100.0 * hi, "level": LEVEL, "n_items": n, "unit": "test images",
        "method": f"percentile bootstrap over test images, class average recomputed per draw, {n_boot} resamples, "
                  "seed 0"}
    run.item_scores[metric] = correct * n / (c * counts[inverse])


def _save_scores(run: TaskRun) -> None:
    scores = run.item_scores
    if scores:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{k: v.astype(np.float32) for k, v in scores.items()})
        write_bytes_atomic(run.out_dir / PREDICTIONS, buffer.getvalue())
        run.extra["predictions"] = PREDICTIONS


def check_disjoint(task: str, extractor: FeatureExtractor, data: str | Path, fit: list[str], test: str) -> None:
    """Refuse a test split that shares images with a split the probe fits on (train, val, the bank):
    by name first (``train`` vs ``train+val``), then by file identity (a split that is a symlink to
    another, hard links: :func:`transfer.probes.readers.check_disjoint`)."""
    from transfer.probes.readers import LayoutError, check_disjoint as check_files

    def parts(split: str) -> set[str]:
        return {s for p in split.split("+") for s in (("train", "val") if p == "trainval" else (p,))}

    for split in fit:
        shared = parts(split) & parts(test)
        if shared:
            raise ValueError(f"{task}: test split {test!r} shares {sorted(shared)} with {split!r}: evaluating on "
                             "the training images is refused; choose another --test-split")
    try:
        check_files((test, extractor.items(data, test)), [(s, extractor.items(data, s)) for s in fit], task)
    except LayoutError as e:
        raise ValueError(f"{e} (--data {data})") from None


def run_task(task: str, args: argparse.Namespace, body: Callable, seeds: list[int] | None = None,
             crop_fraction: float = 1.0, fewshot: bool = False, carve_val: bool = False, linear: bool = False) -> int:
    """Run ``body(run, extractor)`` inside a :class:`transfer.records.TaskRun`; return the exit code.

    A missing ``--data`` folder is ``skipped`` (exit 3); an unreadable checkpoint or dataset, or
    any error in ``body``, is ``failed`` (exit 1) with a one-line error; an existing record is a
    usage error (exit 2) unless ``--force``.
    """
    if args.image_size is not None and args.image_size < 1:
        print(f"{task}: --image-size must be a positive number of pixels, got {args.image_size}", file=sys.stderr)
        return EXIT_USAGE
    if args.threads < 1:
        print(f"{task}: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return EXIT_USAGE
    try:
        torch.device("cpu" if args.device == "auto" else args.device)
    except RuntimeError:
        print(f"{task}: --device {args.device}: expected auto, cpu, cuda or cuda:N", file=sys.stderr)
        return EXIT_USAGE
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run_task(task, args, body, seeds, crop_fraction, fewshot, carve_val, linear)
    finally:
        torch.set_num_threads(previous_threads)  # callers in the same process (tests) keep their setting


def _run_task(task: str, args: argparse.Namespace, body: Callable, seeds: list[int] | None,
              crop_fraction: float, fewshot: bool, carve_val: bool, linear: bool = False) -> int:
    from transfer.probes.datasets import REGISTRY, headline_metric

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    extractor, load_error = None, None
    if Path(args.data).is_dir():
        try:
            extractor = FeatureExtractor(args.ckpt, args.image_size, args.cache_dir, args.batch_size,
                                         args.num_workers, args.device, not args.no_progress, args.backbone,
                                         normalize=args.normalize, crop_fraction=crop_fraction,
                                         require_size=args.scale == "paper",
                                         dataset=args.dataset if args.dataset in REGISTRY else None,
                                         split_file=args.split_file, fewshot=fewshot, carve_val=carve_val,
                                         vit_pool=getattr(args, "vit_pool", None),
                                         vit_last_blocks=getattr(args, "vit_last_blocks", None), linear=linear,
                                         stem_padding=getattr(args, "stem_padding", None))
            config["image_size"] = extractor.image_size
            config["vit_pool"], config["vit_last_blocks"] = extractor.vit_pool, extractor.vit_last_blocks
            config["image_size_source"] = extractor.image_size_source
            config["normalize"] = extractor.preprocess.normalize
        except (CheckpointError, FeatureError, OSError, ValueError) as e:
            load_error = e
    try:
        run = TaskRun(task=task, dataset=args.dataset or dataset_name(args.data), scale=args.scale,
                      out_dir=args.out, ckpt_info=extractor.info if extractor else None, config=config,
                      seeds=seeds, force=args.force)
    except FileExistsError as e:
        print(f"{task}: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with run:
            if not Path(args.data).is_dir():
                raise TaskSkipped(f"dataset folder {args.data} not found (expected <split>/<class>/<image> folders)")
            if load_error is not None:
                raise load_error
            run.extra["preprocess"] = extractor.preprocess.describe()
            run.extra["splits"] = extractor.splits
            body(run, extractor)
            _save_scores(run)
            headline = headline_metric(task, args.dataset)
            if headline in run.metrics:
                run.extra["headline"] = headline
    except Exception as e:  # noqa: BLE001 - TaskRun recorded it; the CLI reports one line and an exit code
        if run.record["status"] == "running":  # the task never started: its folder cannot be written
            print(f"{task}: error: {' '.join(str(e).split())}", file=sys.stderr)
        else:
            print(f"{task}: {run.record['status']}: {run.record['error']}", file=sys.stderr)
    return run.exit_code
