"""The results a report shows: per (checkpoint name, task, config), the latest record of each pretraining seed.

Checkpoints that share a name are the seeds of one group (``run_all --name``); run_all numbers
them (``seed_index``), and the per-item scores a probe saved (``predictions.npz``) are found
through the record's ``predictions`` path, relative to the folder of ``results.jsonl``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from plumbing.safe_read import short
from transfer.records import iter_jsonl, record_problem

# The number a summary table shows per task type (PROTOCOLS.md metric names), first match wins; a
# probe's record names its own (``headline``: the dataset registry's metric, transfer.probes.datasets).
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

    Which record each (checkpoint, task) cell shows, per pretraining seed: :func:`select_records`
    (the latest record of the current config, so a newer failure is shown, never an older ok one).
    """
    path = Path(path)
    if path.is_dir() and not (path / "results.jsonl").is_file() and any(path.rglob("record.json")):
        records = task_folder_records(path)
        path = path / "results.jsonl"  # not written: its folder is the root of the predictions paths
    else:
        if path.is_dir():
            path = path / "results.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"--results {path}: no such file (expected a results.jsonl written by run_all, "
                                    "or a folder of task outputs holding record.json files)")
        records = iter_jsonl(path)  # streamed: only the latest record per cell is kept
    latest, first = latest_records((r for r in records if well_formed(r, path)))
    return results_from_records(latest, path.parent, first)


def latest_records(records: Iterable[dict]) -> tuple[list[dict], dict]:
    """(the latest record per (seed, checkpoint, task, config), in file order; the first-appearance order of
    names and tasks). :func:`select_records` only ever shows those, so a file of a million records is
    read with a handful in memory and gives the report the whole list would."""
    latest: dict[tuple, dict] = {}
    first: dict = {}
    for record in records:
        name, task = record_name(record), record_task(record)
        first.setdefault(name, len(first))
        first.setdefault(("task", task), len(first))
        key = (int(record.get("seed_index") or 0), name, task, config_key(record))
        latest.pop(key, None)  # re-insert: dict order is the order of each key's newest record
        latest[key] = record
    return list(latest.values()), first


def results_from_records(records: list[dict], root: Path | None = None, first: dict | None = None) -> Results:
    """:class:`Results` of ``records`` (in file order); ``root``: the folder relative ``predictions`` paths start from.

    A record's seed is its ``seed_index``; per seed, :func:`select_records` picks what is shown. ``first``:
    names' and tasks' order of first appearance, when ``records`` is already reduced (:func:`latest_records`).
    """
    per_seed: dict[int, list[dict]] = {}
    for record in records:
        per_seed.setdefault(int(record.get("seed_index") or 0), []).append(record)
    chosen = {(name, column, seed): record for seed, group in sorted(per_seed.items())
              for (name, column), record in select_records(group).items()}
    if first is None:  # names and tasks in order of first appearance in the file, labelled variants after theirs
        first = latest_records(records)[1]
    names = sorted({n for n, _, _ in chosen}, key=lambda n: first[n])
    columns = {c: (first[("task", c.split(" [")[0])], c != c.split(" [")[0], c) for _, c, _ in chosen}
    runs: dict[tuple[str, str], list[dict]] = {}
    for (name, column, _), record in sorted(chosen.items(), key=lambda kv: kv[0][2]):
        runs.setdefault((name, column), []).append(record)
    shown = {k: next((r for r in v if r.get("status") == "ok"), v[0]) for k, v in runs.items()}
    return Results(shown, names, sorted(columns, key=columns.get), runs, root)


def well_formed(record: dict, path: Path) -> bool:
    """Whether the report can read ``record``: a field of another type than :class:`transfer.records.Record`
    says (a list metric, a string checkpoint, written by hand or by another tool) or a name that cannot
    name a report file, and it is skipped with a one-line warning naming it."""
    problem = record_problem(record) or _bad_name(record)
    if problem is not None:
        who = f"{short(record.get('name') or '?', 60)} / {short(record.get('task_name') or record.get('task') or '?', 60)}"
        warnings.warn(f"{path}: skipping the record of {who!r}: {problem}", stacklevel=3)
    return problem is None


_NAME_FIELDS = ("name", "task_name", "task")  # they name report files (bars_<task>.png, mast_<name>_*.png)
NAME_MAX = 200


def _bad_name(record: dict) -> str | None:
    """Why a record's name fields cannot name a report file (a NUL byte, '/', > 200 characters), or None."""
    for key in _NAME_FIELDS:
        value = record.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            return f"field {key!r} is a {type(value).__name__}, not a name"
        if "\0" in value or "/" in value:
            return f"field {key!r} = {short(value, 60)!r} holds a NUL byte or '/', so it cannot name a report file"
        if len(value) > NAME_MAX:
            return f"field {key!r} is {len(value):,} characters long (at most {NAME_MAX}: it names report files)"
    return None


def task_folder_records(folder: Path) -> list[dict]:
    """The ``record.json`` of every single-task command under ``folder`` (``--out`` of each), oldest first.

    Their ``predictions`` become paths relative to ``folder``; the task name is the record's task.
    """
    import json

    records = []
    for file in sorted(folder.rglob("record.json")):
        try:
            record = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            warnings.warn(f"{file}: skipped, not a readable record ({type(e).__name__})", stacklevel=2)
            continue
        if not isinstance(record, dict) or "task" not in record:
            continue
        if record.get("predictions"):
            record["predictions"] = str((file.parent / record["predictions"]).relative_to(folder))
        if not record.get("task_name") and record.get("dataset"):  # linear on two datasets: two columns
            record["task_name"] = f"{record['task']}_{str(record['dataset']).replace('/', '_')}"
        records.append(record)
    return sorted(records, key=lambda r: str(r.get("start") or ""))


PAPER_SCALES = ("paper", "demo")  # a record at any other scale label is never a number of these columns


def config_key(record: dict) -> tuple[str, str]:
    """What makes two records of one task comparable: scale label and task config hash."""
    return str(record.get("scale") or "?"), str(record.get("task_config_hash") or "")


def select_records(records: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (checkpoint, task, config) the LATEST record, whatever its status, keyed (checkpoint, column).

    A newer skipped/failed run of the same config is shown, never an older ok one behind it. The
    task's current config (that of its latest record) gets the plain task name as column; an
    earlier config with an ok record keeps its own column, labelled ``task [config 1a2b3c]``; a
    record at a scale such as ``smoke`` or ``paper+overrides`` is labelled ``task [smoke]`` and
    so never lands in a paper column. Earlier configs without an ok record are dropped (superseded).
    """
    latest: dict[tuple[str, str, tuple[str, str]], dict] = {}
    current: dict[tuple[str, str], tuple[str, str]] = {}  # (checkpoint, task) -> config of the newest paper-scale record
    for record in records:
        name, task, config = record_name(record), record_task(record), config_key(record)
        latest.pop((name, task, config), None)  # re-insert: dict order is order of the newest record
        latest[(name, task, config)] = record
        if config[0] in PAPER_SCALES:
            current[(name, task)] = config
    position = {id(r): i for i, r in enumerate(records)}
    chosen: dict[tuple[str, str], dict] = {}
    for (name, task, config), record in sorted(latest.items(), key=lambda kv: position[id(kv[1])]):
        scale, digest = config
        if scale not in PAPER_SCALES:
            column = f"{task} [{scale}]"
        elif current.get((name, task)) == config:
            column = task
        elif record.get("status") == "ok":
            column = f"{task} [config {digest[:6] or 'unknown'}]"
        else:
            continue
        chosen[(name, column)] = record
    return chosen


def commands(results: Results) -> list[str]:
    """The commands that produced the shown records (run_all stores its command line in each)."""
    return list(dict.fromkeys(str(r["command"]) for r in results.records.values() if r.get("command")))


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
    """The task's one number: its records' ``headline`` (a probe writes its dataset registry's metric,
    transfer.probes.datasets.headline_metric: ``class_avg`` for Pets or Flowers-102), else the first
    of :data:`HEADLINE` the records have, else the first few-shot accuracy."""
    names = metric_names(results, task)
    if not names:
        return None
    kind = next((r.get("task") for (n, t), r in results.records.items() if t == task), None)
    for (n, t), record in results.records.items():
        if t == task and record.get("status") == "ok" and record.get("headline") in names:
            return record["headline"]
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
