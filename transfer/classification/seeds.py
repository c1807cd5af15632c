"""Fine-tuning seeds as a group, as the detection engine has them (``--seeds 0 1 2``).

One mmengine Runner per seed, in ``OUT/seed_S``: ``work/`` (the Runner's checkpoints), ``epochs.jsonl``,
``train.log``, ``predictions.npz`` (the seed's last validation, per image) and ``result.json``, written
last, once the seed has finished. Each seed resumes on its own: with ``--resume`` a finished seed is read
back, not rerun (only when its ``result.json`` was made from the same config: a changed config is one
line); a seed whose Runner saved a checkpoint continues from it; a seed with neither starts from the
weights. Without ``--resume`` every seed starts over. All of this is decided before the first seed
trains, so every process of a multi-GPU run decides alike.

The record (:func:`record_group`) follows detection's: every metric the mean over seeds, ``metrics_std``
their std, ``per_seed`` each seed's metrics, ``resumed`` what each resumed seed continued from; and
``seed_runs`` each seed's interval over validation images and its epochs. The headline's interval is
:func:`transfer.stats.group_interval` over the seeds' per-image hits: the hierarchical bootstrap (seeds
crossed with validation images: one image resample for every drawn seed) that docs/STATISTICS.md uses for a
group of seeds; with one seed it is
the interval over validation images, to the bit. ``OUT/predictions.npz`` holds each image's hit rate over
the seeds (its mean is the headline): the per-item scores a report pairs two checkpoints on.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from plumbing.atomic import write_bytes_atomic, write_text_atomic
from plumbing.safe_read import UnreadableFile, read_regular, read_regular_text
from transfer.records import TaskFailed, TaskRun

PREDICTIONS = "predictions.npz"
RESULT_FILE = "result.json"  # a finished seed: written last, atomically
HEADLINE = ("top1", "top5")
# per-seed keys of the run config: the rest must be equal for a finished seed to be read back
PER_SEED_KEYS = ("resume", "work_dir", "randomness", "load_from")


def seed_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"seed_{seed}"


def fingerprint(cfg: Any, ckpt_sha256: str) -> str:
    """sha256 of the checkpoint's and the run config's (without its per-seed keys) identities: what a finished
    seed must have been made from to be read back."""
    shared = {k: v for k, v in cfg.to_dict().items() if k not in PER_SEED_KEYS}
    return hashlib.sha256(json.dumps([ckpt_sha256, shared], sort_keys=True, default=str).encode()).hexdigest()


def plan(out: Path, seeds: list[int], resume: bool, config_sha: str) -> dict[int, str]:
    """Per seed: ``reuse`` (finished, same config), ``resume`` (a Runner checkpoint) or ``fresh``."""
    if not resume:
        return {s: "fresh" for s in seeds}
    modes = {}
    for s in seeds:
        done = _read_result(seed_dir(out, s))
        if done is not None and done.get("config_sha256") != config_sha:
            raise TaskFailed(f"--resume: seed {s} finished under another config ({seed_dir(out, s) / RESULT_FILE}: "
                             f"config sha256 {str(done.get('config_sha256'))[:12]}, now {config_sha[:12]}); "
                             "run with --force to start every seed over")
        pointer = seed_dir(out, s) / "work" / "last_checkpoint"
        modes[s] = "reuse" if done is not None else "resume" if pointer.exists() or pointer.is_symlink() else "fresh"
    if set(modes.values()) == {"fresh"}:
        raise FileNotFoundError(f"--resume: no Runner checkpoint and no finished seed in {Path(out)}/seed_*/ "
                                f"(seeds {seeds}); run without --resume to start")
    return modes


def run_seeds(cfg: Any, converted: Path, out: Path, seeds: list[int], resume: bool, frozen: bool,
              ckpt_sha256: str, writes: bool) -> dict[int, dict]:
    """Train and validate every seed (reading finished ones back); ``writes``: this process writes the files."""
    from transfer.classification.train import train_and_evaluate

    config_sha = fingerprint(cfg, ckpt_sha256)
    modes = plan(out, seeds, resume, config_sha)
    for s in seeds:
        if writes and modes[s] != "reuse":  # before any seed trains: a later --resume must never find an
            (seed_dir(out, s) / RESULT_FILE).unlink(missing_ok=True)  # earlier attempt's "finished" ...
            if modes[s] == "fresh":  # ... or continue an earlier attempt's Runner file
                (seed_dir(out, s) / "work" / "last_checkpoint").unlink(missing_ok=True)
    results = {}
    for s in seeds:
        folder = seed_dir(out, s)
        if modes[s] == "reuse":
            results[s] = _load_seed(folder)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        run_cfg = copy.deepcopy(cfg)
        run_cfg.work_dir = str(folder / "work")
        run_cfg.randomness = dict(run_cfg.get("randomness") or {}, seed=s)
        run_cfg.resume = modes[s] == "resume"
        results[s] = train_and_evaluate(run_cfg, converted, folder, frozen)
        if writes:
            _save_seed(folder, results[s], config_sha)
    return results


def _save_seed(folder: Path, result: dict, config_sha: str) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v, dtype=np.float32) for k, v in result["hits"].items()})
    write_bytes_atomic(folder / PREDICTIONS, buffer.getvalue())
    write_text_atomic(folder / RESULT_FILE, json.dumps(
        {"config_sha256": config_sha, "epochs": result["epochs"], "extra": result["extra"],
         "predictions": PREDICTIONS}, indent=1) + "\n")


def _read_result(folder: Path) -> dict | None:
    """``folder/result.json`` as a dict, None when absent; a file that is not one is one line."""
    path = folder / RESULT_FILE
    if not (path.exists() or path.is_symlink()):
        return None
    try:
        done = json.loads(read_regular_text(path, "seed result", 16 << 20))
    except (UnreadableFile, ValueError, RecursionError) as e:
        raise TaskFailed(f"--resume: {path} is not a finished seed's result ({e}); run with --force to start "
                         "over") from None
    if not isinstance(done, dict) or not isinstance(done.get("epochs"), list) or not done["epochs"]:
        raise TaskFailed(f"--resume: {path} is not a finished seed's result (no epochs); run with --force")
    return done


def _load_seed(folder: Path) -> dict:
    """A finished seed read back: its epochs, extra and per-image hits (``allow_pickle=False``: data only)."""
    done = _read_result(folder)
    path = folder / PREDICTIONS
    try:
        with np.load(io.BytesIO(read_regular(path, "seed predictions", 1 << 30)), allow_pickle=False) as npz:
            hits = {k: npz[k].astype(np.float64) for k in HEADLINE}
    except (UnreadableFile, OSError, ValueError, KeyError) as e:
        raise TaskFailed(f"--resume: {path}: the finished seed's per-image hits are unreadable ({e}); "
                         "run with --force to start over") from None
    extra = dict(done.get("extra") or {}, reused=f"finished in an earlier attempt ({folder.name}/{RESULT_FILE}), "
                                                 "read back, not rerun")
    return {"epochs": done["epochs"], "hits": hits, "extra": extra}


def record_group(task: TaskRun, results: dict[int, dict]) -> None:
    """Mean over seeds with std and the hierarchical interval; each seed's numbers; the hit rates per image."""
    from transfer.stats import N_BOOT, group_interval, mean_interval

    seeds = list(results)
    hits = {m: [np.asarray(results[s]["hits"][m], dtype=np.float64) for s in seeds] for m in HEADLINE}
    per_seed, runs = {}, {}
    for s, result in results.items():
        epochs = result["epochs"]
        per_seed[str(s)] = {**{m: 100.0 * float(np.mean(result["hits"][m])) for m in HEADLINE},
                            # VICReg's printed best_acc: the maximum of each over epochs, separately
                            **{f"best_{m}_val_selected": max(e[m] for e in epochs) for m in HEADLINE}}
        runs[str(s)] = {"intervals": {m: _interval(mean_interval(np.asarray(result["hits"][m], dtype=np.float64),
                                                                   n_boot=N_BOOT, seed=0), hits[m][0].size, 1)
                                      for m in HEADLINE},
                        "epochs": epochs, **result["extra"]}
    for name in per_seed[str(seeds[0])]:
        values = [per_seed[str(s)][name] for s in seeds]
        task.metrics[name] = statistics.fmean(values)
        if len(seeds) > 1:
            task.metrics_std[name] = statistics.stdev(values)
    for m in HEADLINE:
        iv = group_interval(hits[m], n_boot=N_BOOT, seed=0)
        task.metrics[m] = 100.0 * iv.value  # the same mean as above, from the hits (no rounding to a percent)
        task.extra.setdefault("intervals", {})[m] = _interval(iv, hits[m][0].size, len(seeds))
    extras = {str(s): r["extra"] for s, r in results.items()}
    resumed = {s: x.get("reused") or f"resumed from {x['engine_resumed_from']}" for s, x in extras.items()
               if x.get("reused") or x.get("engine_resumed_from")}
    task.extra.update(per_seed=per_seed, seed_runs=runs, epochs=_mean_epochs(results), headline="last epoch",
                      selection_note=(
                          "best_*_val_selected: the maximum over epochs of validation accuracy (what VICReg's evaluate.py "
                          "prints), chosen on the evaluation data itself, mean over seeds; the headline is the last epoch"))
    if resumed:
        task.extra["resumed"] = resumed
    unchanged = {r["extra"].get("backbone_unchanged") for r in results.values()}
    if unchanged != {None}:
        task.extra["backbone_unchanged"] = f"{unchanged.pop()} (every seed)"
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{m: np.mean(hits[m], axis=0).astype(np.float32) for m in HEADLINE})
    write_bytes_atomic(task.out_dir / PREDICTIONS, buffer.getvalue())
    task.extra["predictions"] = PREDICTIONS


def _interval(iv: Any, n_items: int, n_seeds: int) -> dict[str, Any]:
    from transfer.stats import LEVEL, N_BOOT

    how = (f"percentile bootstrap over validation images, {N_BOOT} resamples, seed 0" if n_seeds == 1 else
           f"hierarchical percentile bootstrap over the {n_seeds} fine-tuning seeds crossed with the validation "
           f"images (transfer.stats.group_interval), {N_BOOT} resamples, seed 0")
    return {"lo": 100.0 * iv.lo, "hi": 100.0 * iv.hi, "level": LEVEL, "n_items": int(n_items), "n_seeds": n_seeds,
            "unit": "validation images", "method": how}


def _mean_epochs(results: dict[int, dict]) -> list[dict[str, float]]:
    """Every validated epoch's top-1/top-5, the mean over the seeds that validated it (one seed: its own)."""
    by_epoch: dict[int, list[dict]] = {}
    for result in results.values():
        for e in result["epochs"]:
            by_epoch.setdefault(int(e["epoch"]), []).append(e)
    return [{"epoch": k, **{m: statistics.fmean(e[m] for e in by_epoch[k]) for m in HEADLINE},
             "n_seeds": len(by_epoch[k])} for k in sorted(by_epoch)]
