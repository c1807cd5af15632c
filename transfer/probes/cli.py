"""The CLI frame the three probes share: arguments, the result record, exit codes (contract "Task CLI")."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mast.atomic import write_bytes_atomic
from transfer.checkpoints import CheckpointError, add_backbone_arg
from transfer.probes.features import FeatureError, FeatureExtractor
from transfer.records import EXIT_USAGE, TaskRun, TaskSkipped
from transfer.stats import LEVEL, N_BOOT, mean_interval

__all__ = ["add_common_args", "dataset_name", "run_task", "record_scores", "PREDICTIONS"]

PREDICTIONS = "predictions.npz"  # per-item scores next to record.json: {metric: float array}, no pickles


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="backbone checkpoint (any format transfer.checkpoints reads)")
    parser.add_argument("--data", required=True, help="dataset root holding <split>/<class>/<image> folders")
    parser.add_argument("--out", required=True, help="output directory for record.json and config.yaml")
    parser.add_argument("--scale", choices=["demo", "paper"], default="demo")
    parser.add_argument("--dataset", default=None, help="dataset name in the record (default: from --data)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="Resize+CenterCrop size (default: the checkpoint's pretraining resolution, else 224)")
    parser.add_argument("--cache-dir", default=".cache/features")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the probes' solvers are many small ops, where one "
                             "thread per process measured 2-30x faster than two)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--force", action="store_true", help="replace an existing record.json in --out")
    add_backbone_arg(parser)


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


def _save_scores(run: TaskRun) -> None:
    scores = run.item_scores
    if scores:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{k: v.astype(np.float32) for k, v in scores.items()})
        write_bytes_atomic(run.out_dir / PREDICTIONS, buffer.getvalue())
        run.extra["predictions"] = PREDICTIONS


def run_task(task: str, args: argparse.Namespace, body: Callable, seeds: list[int] | None = None) -> int:
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
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run_task(task, args, body, seeds)
    finally:
        torch.set_num_threads(previous_threads)  # callers in the same process (tests) keep their setting


def _run_task(task: str, args: argparse.Namespace, body: Callable, seeds: list[int] | None) -> int:
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    extractor, load_error = None, None
    if Path(args.data).is_dir():
        try:
            extractor = FeatureExtractor(args.ckpt, args.image_size, args.cache_dir, args.batch_size,
                                         args.num_workers, args.device, not args.no_progress, args.backbone)
            config["image_size"] = extractor.image_size
        except (CheckpointError, FeatureError, OSError) as e:
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
            body(run, extractor)
            _save_scores(run)
    except Exception as e:  # noqa: BLE001 - TaskRun recorded it; the CLI reports one line and an exit code
        if run.record["status"] == "running":  # the task never started: its folder cannot be written
            print(f"{task}: error: {' '.join(str(e).split())}", file=sys.stderr)
        else:
            print(f"{task}: {run.record['status']}: {run.record['error']}", file=sys.stderr)
    return run.exit_code
