"""The results a report shows: the latest record per (checkpoint, task) from ``results.jsonl``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

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
    """Selected records keyed by (checkpoint name, task name), in order of first appearance."""

    records: dict[tuple[str, str], dict]
    names: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)

    def get(self, name: str, task: str) -> dict | None:
        return self.records.get((name, task))


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

    Per (checkpoint, task) the latest ``ok`` record wins; a pair with no ok record shows its latest
    record (failed or skipped), so a table says why a cell is empty.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"--results {path}: no such file (expected a results.jsonl written by run_all)")
    chosen: dict[tuple[str, str], dict] = {}
    names: list[str] = []
    tasks: list[str] = []
    for record in read_jsonl(path):
        name, task = record_name(record), record_task(record)
        if name not in names:
            names.append(name)
        if task not in tasks:
            tasks.append(task)
        previous = chosen.get((name, task))
        if previous is None or record.get("status") == "ok" or previous.get("status") != "ok":
            chosen[(name, task)] = record
    return Results(chosen, names, tasks)


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
