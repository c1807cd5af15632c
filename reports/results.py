"""The results a report shows: per (checkpoint name, task), the latest record of each pretraining seed.

Checkpoints that share a name are the seeds of one group (``run_all --name``); run_all numbers
them (``seed_index``), and the per-item scores a probe saved (``predictions.npz``) are found
through the record's ``predictions`` path, relative to the folder of ``results.jsonl``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transfer.records import read_jsonl

# The number a summary table shows per task type (PROTOCOLS.md metric names), first match wins.
HEADLINE = {
    "detection": ("bbox_AP", "AP"),
    "segmentation": ("mIoU",),
    "fewshot": (),  # first acc_{W}way_{K}shot
    "linear": ("top1",),
    "knn": ("top1_k20", "top1_k200"),
}


@dataclass
class Results:
    """Selected records keyed by (checkpoint name, task name), in order of first appearance.

    ``records`` holds one representative record per pair (the first seed with an ok record);
    ``runs`` holds every seed's record, ordered by ``seed_index``.
    """

    records: dict[tuple[str, str], dict]
    names: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    runs: dict[tuple[str, str], list[dict]] = field(default_factory=dict)
    root: Path | None = None  # folder of results.jsonl: predictions paths are relative to it
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def get(self, name: str, task: str) -> dict | None:
        return self.records.get((name, task))

    def seeds(self, name: str, task: str) -> list[dict]:
        return self.runs.get((name, task), [])

    def n_seeds(self, name: str) -> int:
        """Pretraining seeds of a group: the most seeds any of its tasks has."""
        return max((len(v) for (n, _), v in self.runs.items() if n == name), default=0)

    def scores(self, record: dict, metric: str) -> np.ndarray | None:
        """Per-item scores (0/1 per test image, accuracy per episode) the task saved for ``metric``."""
        rel = record.get("predictions")
        if not rel or record.get("status") != "ok":
            return None
        path = Path(rel) if Path(rel).is_absolute() or self.root is None else self.root / rel
        if path not in self.cache:
            try:
                with np.load(path, allow_pickle=False) as npz:
                    self.cache[path] = {k: npz[k].astype(np.float64) for k in npz.files}
            except (OSError, ValueError) as e:
                warnings.warn(f"{path}: per-item scores unreadable ({e}); that number is shown without its interval",
                              stacklevel=2)
                self.cache[path] = {}
        return self.cache[path].get(metric)


def record_name(record: dict) -> str:
    """Checkpoint display name: run_all's ``name``, else the checkpoint file's stem."""
    if record.get("name"):
        return str(record["name"])
    path = (record.get("checkpoint") or {}).get("path") or "unknown"
    return Path(path).stem


def record_task(record: dict) -> str:
    return str(record.get("task_name") or record.get("task") or "unknown")


def load_results(path: str | Path) -> Results:
    """Read ``path`` (a results.jsonl or the folder holding it); corrupt lines are skipped with a warning.

    Per (checkpoint, task, seed_index) the latest ``ok`` record wins; one with no ok record shows
    its latest record (failed or skipped), so a table says why a cell is empty. A retrained
    checkpoint under the same name and seed index replaces the old one.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"--results {path}: no such file (expected a results.jsonl written by run_all)")
    chosen: dict[tuple[str, str, int], dict] = {}
    pairs: dict[tuple[str, str], None] = {}  # first-appearance order
    names: list[str] = []
    tasks: list[str] = []
    for record in read_jsonl(path):
        name, task = record_name(record), record_task(record)
        if name not in names:
            names.append(name)
        if task not in tasks:
            tasks.append(task)
        pairs.setdefault((name, task), None)
        key = (name, task, int(record.get("seed_index") or 0))
        previous = chosen.get(key)
        if previous is None or record.get("status") == "ok" or previous.get("status") != "ok":
            chosen[key] = record
    runs: dict[tuple[str, str], list[dict]] = {}
    for (name, task, _), record in sorted(chosen.items(), key=lambda kv: kv[0][2]):
        runs.setdefault((name, task), []).append(record)
    records = {k: next((r for r in runs[k] if r.get("status") == "ok"), runs[k][0]) for k in pairs}
    return Results(records, names, tasks, runs, path.parent)


def finite(value) -> float | None:
    """A metric value as float, or None if missing/non-finite (records store NaN as a string)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def metric_names(results: Results, task: str) -> list[str]:
    """Metric columns of a task, in first-seen order; ``*_ci95`` are shown as ± of their metric."""
    out: list[str] = []
    for name in results.names:
        record = results.get(name, task)
        if record is None or record.get("status") != "ok":
            continue
        for m in record.get("metrics") or {}:
            if not m.endswith("_ci95") and m not in out:
                out.append(m)
    return out


def headline_metric(results: Results, task: str) -> str | None:
    names = metric_names(results, task)
    if not names:
        return None
    kind = next((r.get("task") for (n, t), r in results.records.items() if t == task), None)
    for candidate in HEADLINE.get(kind, ()):
        if candidate in names:
            return candidate
    accs = [m for m in names if m.startswith("acc_")]
    return accs[0] if accs else names[0]


def task_label(results: Results, task: str) -> str:
    """``knn_shape`` -> ``knn_shape (knn, synthetic/shape)`` for section titles."""
    record = next((r for (n, t), r in results.records.items() if t == task), {})
    bits = [b for b in (record.get("task"), record.get("dataset")) if b and b != task]
    return f"{task} ({', '.join(map(str, bits))})" if bits else task
