"""Result records: one JSON object per task run (PROTOCOLS.md "Results"), written atomically.

A task wraps its work in :class:`TaskRun`; whatever happens inside, exactly one complete
``record.json`` lands in the task's output directory::

    with TaskRun(task="knn", dataset="synthetic/shape", scale="demo", out_dir=out,
                 ckpt_info=info, config=cfg, seeds=[0]) as run:
        run.metrics["top1_k20"] = 71.3

Its fields are those of :class:`Record`, the one definition of a record (field, type, who writes
it, meaning; PROTOCOLS.md's table is generated from it). ``run_all`` completes each with its own
fields (:func:`complete`) and collects them into ``results.jsonl`` with :func:`append_jsonl`;
readers use :func:`read_jsonl`, which skips (and warns about) a line a killed writer left corrupt,
and :func:`record_problem` to check a record's shape.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys
import time
import traceback
import warnings
from dataclasses import asdict, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import yaml

from plumbing.atomic import append_line_atomic, write_text_atomic
from plumbing.provenance import code_version, library_versions
from transfer.record_schema import _RUN_ALL, Record, RecordError, fields_table, record_problem

__all__ = ["Record", "RecordError", "record_problem", "fields_table", "complete", "log_tail",
           "TaskRun", "TaskSkipped", "TaskFailed", "new_record", "write_json_atomic", "append_jsonl", "read_jsonl",
           "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_SKIPPED"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SKIPPED = 0, 1, 2, 3
# What an earlier attempt in the same folder left beside its record (its traceback, detectron2's
# per-rank logs): removed when a new attempt starts, so nothing stale sits next to the new record.
LEFTOVERS = ("traceback.txt", "log.txt.rank*")


class TaskSkipped(Exception):
    """The task cannot run here (e.g. its dataset is not on disk): recorded as ``skipped``."""


class TaskFailed(Exception):
    """The task ran and failed for a reason it can name (NaN loss, unloaded weights...)."""


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as one line (:func:`plumbing.atomic.append_line_atomic`: locked, never torn)."""
    append_line_atomic(path, json.dumps(_jsonable(record), sort_keys=False))


LINE_MAX_BYTES = 64 << 20  # a record is a few kB; a longer line is not one (and is never held whole)


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """The records of ``path``, read line by line (a million records never sit in memory as text); a
    corrupt, over-long, too deeply nested or non-object line is skipped with a warning naming it."""
    path = Path(path)
    if not path.is_file():  # also a FIFO (opening it would block): no records
        return
    with open(path, "rb") as f:
        for lineno, raw in enumerate(_lines(f), 1):
            if raw is None:
                warnings.warn(f"{path}:{lineno}: skipping a line longer than {LINE_MAX_BYTES:,} bytes", stacklevel=2)
                continue
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
                why = "nested too deeply" if isinstance(e, RecursionError) else "corrupt"
                warnings.warn(f"{path}:{lineno}: skipping a {why} line ({line[:60]!r}...)", stacklevel=2)
                continue
            if isinstance(rec, dict):
                yield rec
            else:
                warnings.warn(f"{path}:{lineno}: skipping a line that is not a JSON object", stacklevel=2)


def _lines(f) -> Iterator[bytes | None]:
    """The lines of binary file ``f``; None for one longer than :data:`LINE_MAX_BYTES` (read past, not kept)."""
    while True:
        line = f.readline(LINE_MAX_BYTES + 1)
        if not line:
            return
        if len(line) > LINE_MAX_BYTES and not line.endswith(b"\n"):
            while (more := f.readline(1 << 20)) and not more.endswith(b"\n"):
                pass
            yield None
            continue
        yield line


def read_jsonl(path: str | Path) -> list[dict]:
    """All records in ``path`` (:func:`iter_jsonl`); corrupt lines are skipped with a warning, never fatal."""
    return list(iter_jsonl(path))


def new_record(task: str, dataset: str, scale: str, checkpoint: dict | None, method: str | None,
               config: dict | None = None, seeds: list[int] | None = None) -> dict[str, Any]:
    """A task's :class:`Record` as its JSON object, status ``running``."""
    return Record(task=task, dataset=dataset, scale=scale, seeds=list(seeds or []), checkpoint=checkpoint,
                  method=method, config=config or {}, code_version=code_version()).to_json()


class TaskRun:
    """Context manager that owns a task's ``record.json`` (see module docstring).

    An ``Exception`` raised inside the block is caught: the record says ``failed`` (or ``skipped``
    for :class:`TaskSkipped`), ``traceback.txt`` keeps the details, and the CLI ends with
    ``sys.exit(run.exit_code)``. ``KeyboardInterrupt`` is recorded, then propagates.

    Refuses to start when ``out_dir`` already holds a record, unless ``force``: results a user
    produced are never overwritten silently.
    """

    def __init__(
        self,
        task: str,
        dataset: str,
        scale: str,
        out_dir: str | Path,
        ckpt_info: Any,  # a transfer.backbones CheckpointInfo (a dataclass; the floor does not import backbones), or None
        config: dict | None = None,
        seeds: list[int] | None = None,
        force: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.record_path = self.out_dir / "record.json"
        if self.record_path.exists() and not force:
            raise FileExistsError(
                f"{self.record_path} already exists; pass --force to re-run (or choose another --out)"
            )
        self.record = new_record(task, dataset, scale, asdict(ckpt_info) if ckpt_info else None,
                                 ckpt_info.method if ckpt_info else None, config, seeds)
        self.metrics: dict[str, float] | None = self.record["metrics"]
        self.metrics_std: dict[str, float] | None = self.record["metrics_std"]
        self.extra: dict[str, Any] = {}
        self.item_scores: dict[str, Any] = {}  # per-item scores a task saves next to the record (probes/cli.py)

    @property
    def config(self) -> dict:
        return self.record["config"]

    def __enter__(self) -> "TaskRun":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.record_path.unlink(missing_ok=True)
        for pattern in LEFTOVERS:
            for stale in self.out_dir.glob(pattern):
                stale.unlink(missing_ok=True)
        self._t0 = time.monotonic()
        self.record["start"] = _now()
        write_text_atomic(self.out_dir / "config.yaml", yaml.safe_dump(_jsonable(self.config), sort_keys=False))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            bad = {k: v for k, v in self.metrics.items() if not math.isfinite(float(v))}
            shape = record_problem(_jsonable({**self.record, **self.extra}))  # a task bug: never an ok record
            status, error = (("failed", f"non-finite metrics {bad}") if bad else
                             ("failed", f"record field {shape} (transfer.records.Record)") if shape else ("ok", None))
        elif isinstance(exc, TaskSkipped):
            status, error = "skipped", _one_line(exc)
        elif isinstance(exc, KeyboardInterrupt):
            status, error = "failed", "interrupted (KeyboardInterrupt)"
        else:
            status, error = "failed", f"{type(exc).__name__}: {_one_line(exc)}"
        self.record.update(
            status=status,
            error=error,
            end=_now(),
            elapsed_s=round(time.monotonic() - self._t0, 3),
            versions=library_versions(),
            config=self.config,
            **self.extra,
        )
        try:
            write_text_atomic(self.out_dir / "config.yaml", yaml.safe_dump(_jsonable(self.config), sort_keys=False))
            write_json_atomic(self.record_path, self.record)
        except OSError as write_error:  # e.g. a full disk: say so in one line; the exit code says failed
            self.record.update(status="failed", error=f"record not written: {_one_line(write_error)}")
            print(f"{self.record['task']}: failed: {self.record['error']}", file=sys.stderr)
            return exc is None or isinstance(exc, Exception)
        if exc is None or not isinstance(exc, Exception):
            return False  # KeyboardInterrupt/SystemExit propagate after the record is written
        # A failure is data, not a crash: the record says why, the traceback sits next to it,
        # the CLI exits with run.exit_code.
        write_text_atomic(self.out_dir / "traceback.txt", "".join(traceback.format_exception(exc_type, exc, tb)))
        print(f"{self.record['task']}: {status}: {error}", file=sys.stderr)
        return True

    @property
    def exit_code(self) -> int:
        return {"ok": EXIT_OK, "skipped": EXIT_SKIPPED}.get(self.record["status"], EXIT_FAILED)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())[:1000]


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: dataclasses, paths, tuples, numpy/torch scalars become JSON values."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return _jsonable(obj.item())
        except (ValueError, RuntimeError):
            pass
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    return str(obj)


# --- Completion by run_all -----------------------------------------------------------------------------

def complete(out_dir: Path, known: Record, root: Path | None = None, ended: str | None = None,
             verdict: tuple[str, str] | None = None) -> dict[str, Any]:
    """The record of the task run in ``out_dir``, completed with run_all's fields, written back and returned.

    ``known`` holds run_all's fields (name, task_name, ..., exit_code, wall_s) and the task fields of a
    record written here (task, dataset, scale label, checkpoint, method, config). The record is a failed
    one when the task left none, or when ``ended`` says the job ended outside the task (the cluster ended
    it, it timed out, its exit status is lost): that cause and the tail of the task's log, whatever the
    task had written. ``verdict``: run_all's own (status, error), for a task it did not start (its dataset
    check). ``predictions`` becomes relative to ``root`` (results.jsonl's folder) so OUT can move.
    """
    path = out_dir / "record.json"
    record = _read_record(path)
    if verdict is None and (ended is not None or record is None):
        why = ended if ended is not None else f"exit code {known.exit_code} without a record"
        verdict = ("failed", f"{why}; {log_tail(out_dir)}")
    if verdict is not None:
        record = replace(known, status=verdict[0], error=verdict[1],
                         code_version=known.code_version or code_version()).to_json()
    if not record.get("checkpoint"):  # a task that stopped before reading the checkpoint (e.g. skipped)
        record.update(checkpoint=known.checkpoint, method=record.get("method") or known.method)
    record.update({f.name: getattr(known, f.name) for f in fields(Record) if f.metadata.get("by") == _RUN_ALL or
                   (str(f.metadata.get("by")).startswith(_RUN_ALL) and getattr(known, f.name) is not None)})
    local = record.get("predictions")  # as the task wrote it: relative to its own folder
    if local:
        where = out_dir / local
        record["predictions"] = str(where.relative_to(root) if root and where.is_relative_to(root) else where)
    if known.smoke or known.overrides:  # never a paper number: the label says what it is
        record.update(scale=known.scale, overrides=list(known.overrides or []), smoke=bool(known.smoke))
    try:  # the task's record.json says what results.jsonl says (scale label, run_all's fields)
        write_json_atomic(path, dict(record, predictions=local) if local else record)
    except OSError:
        pass  # results.jsonl, appended next, is the record of this run
    return record


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def log_tail(out_dir: Path, lines: int = 15, chars: int = 1500) -> str:
    """The last lines of the task's ``run_all.log``, on one line (what a failed record quotes)."""
    try:
        text = (out_dir / "run_all.log").read_text(errors="replace")
    except OSError:
        return "no log"
    tail = " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())
    return ("log tail: " + tail)[-chars:]
