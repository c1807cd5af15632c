"""The record's one typed definition: :class:`Record` (field, type, who writes it, meaning), the shape check
:func:`record_problem` and PROTOCOLS.md's field table (:func:`fields_table`). :mod:`transfer.records` writes
records of this shape and re-exports these names."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from plumbing.safe_read import short

_TASK, _TASK_EXTRA, _RUN_ALL = "task", "task, when it has it", "run_all"


def _field(meaning: str, by: str = _TASK, default: Any = None, factory: Any = None) -> Any:
    """A record field: what it means, who writes it. A task's fields are always in the JSON; the others
    only once set (a task's own record.json has no run_all field; :func:`complete` writes run_all's)."""
    meta = {"meaning": meaning, "by": by}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Record:
    """One task run (PROTOCOLS.md "Results"). On disk it is a JSON object (:meth:`to_json`); a task holds
    it as that object while it runs (``TaskRun.record``); :meth:`from_json` reads any record written
    since the first version (absent fields: their default; keys this class does not know: kept in ``more``)."""

    task: str = _field("task type: detection, segmentation, fewshot, linear or knn", default="")
    dataset: str = _field("dataset name or path the task read", default="")
    scale: str = _field("demo, paper; smoke or SCALE+overrides: never a paper number", default="")
    metrics: dict[str, float] | None = _field("metric name -> value (PROTOCOLS.md names per task)", factory=dict)
    metrics_std: dict[str, float] | None = _field("metric name -> std over the task's seeds", factory=dict)
    seeds: list[int] | None = _field("the task's own seeds (fine-tuning runs, probe splits)", factory=list)
    checkpoint: dict | None = _field("what was evaluated: path, sha256, arch, method, backbone, ...")
    method: str | None = _field("pretraining method, as the checkpoint's run says")
    config: dict = _field("the task's resolved config (also config.yaml beside the record)", factory=dict)
    code_version: str | None = _field("git describe of the code (-dirty when edited)")
    versions: dict[str, str] = _field("python, platform, torch and the engines' versions", factory=dict)
    start: str | None = _field("UTC start time, ISO 8601")
    end: str | None = _field("UTC end time, ISO 8601")
    elapsed_s: float | None = _field("the task's own run time in seconds")
    status: str = _field("running, ok, skipped or failed", default="running")
    error: str | None = _field("why it was skipped or failed, one line")
    headline: str | None = _field("the metric a summary shows (the probe dataset's metric)", _TASK_EXTRA)
    intervals: dict[str, dict] | None = _field("metric -> its 95 % interval and how it was made", _TASK_EXTRA)
    predictions: str | None = _field("per-item scores file (.npz), relative to results.jsonl's folder", _TASK_EXTRA)
    preprocess: dict | None = _field("probe preprocessing: resize, crop, mean/std", _TASK_EXTRA)
    splits: dict | None = _field("probe splits: how each was made, its size", _TASK_EXTRA)
    feature_bn: bool | None = _field("linear probe: BatchNorm on the features", _TASK_EXTRA)
    details: dict | None = _field("task-specific details (k used, weight-decay sweep, solver)", _TASK_EXTRA)
    per_seed: dict[str, dict] | None = _field("detection, classification: metrics per fine-tuning seed", _TASK_EXTRA)
    vit_conversion: dict | None = _field("ViT weights: tensors added and left unused by the conversion", _TASK_EXTRA)
    resumed: dict | None = _field("detection, classification: per fine-tuning seed, the checkpoint its run continued from", _TASK_EXTRA)
    batch: dict | None = _field("segmentation: the batch plan, effective against the protocol's", _TASK_EXTRA)
    vit_protocol: dict | None = _field("classification on a ViT: its codebase's protocol (config, source, pooling)", _TASK_EXTRA)
    name: str | None = _field("checkpoint display name (--name): the report's row", _RUN_ALL)
    task_name: str | None = _field("suite task name: the report's column", _RUN_ALL)
    task_config_hash: str | None = _field("hash of the task's suite entry: which records compare", _RUN_ALL)
    ckpt_sha256: str | None = _field("sha256 of the checkpoint file", _RUN_ALL)
    backbone_option: str | None = _field("--backbone as given (None: the file's default)", _RUN_ALL)
    ckpt_backbone: str | None = _field("the backbone chosen in the file", _RUN_ALL)
    task_args: dict | None = _field("the suite entry's arguments", _RUN_ALL)
    run_dir: str | None = _field("the task's output folder", _RUN_ALL)
    exit_code: int | None = _field("the task process's exit code (None: lost)", _RUN_ALL)
    wall_s: float | None = _field("wall time of the job, process start included", _RUN_ALL)
    seed_index: int | None = _field("pretraining seed number within its --name group", _RUN_ALL)
    pretrain_seed: int | None = _field("the pretraining run's seed, when its config says", _RUN_ALL)
    command: str | None = _field("the run_all command line that produced the record", _RUN_ALL)
    resumed_from: dict | None = _field("the task checkpoint a resubmitted job continued from", _RUN_ALL)
    cluster_state: str | None = _field("SLURM's state when the cluster ended the job", _RUN_ALL + ", when set")
    slurm_job_id: str | None = _field("that SLURM job's id", _RUN_ALL + ", when set")
    timed_out: bool | None = _field("the job ran past its timeout_min", _RUN_ALL + ", when set")
    overrides: list[str] | None = _field("the --task-args it ran with: never a paper number", _RUN_ALL + ", when set")
    smoke: bool | None = _field("run_all --smoke: a pipeline check", _RUN_ALL + ", when set")
    more: dict[str, Any] = field(default_factory=dict, repr=False, metadata={"by": None})

    @classmethod
    def from_json(cls, obj: dict) -> "Record":
        """``obj`` (a record read from disk) as a Record; :class:`RecordError` names a field of the wrong type."""
        problem = record_problem(obj)
        if problem:
            raise RecordError(problem)
        known = {f.name for f in fields(cls) if f.name != "more"}
        return cls(**{k: v for k, v in obj.items() if k in known},
                   more={k: v for k, v in obj.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        """The JSON object: the task's fields, then the others that are set, in schema order; then ``more``."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name != "more" and (getattr(self, f.name) is not None or _always(f))}
        return {**out, **{k: v for k, v in self.more.items() if k not in out}}


class RecordError(ValueError):
    """A record field holds a value of the wrong type (the message names the field)."""


def _always(f) -> bool:
    return f.metadata.get("by") == _TASK


def record_problem(obj: dict) -> str | None:
    """Why ``obj`` is not a record of :class:`Record`'s shape (the first field of the wrong type), or None.
    Every field may be absent (records written before it existed); a present one must have its type."""
    hints = _hints()
    for f in fields(Record):
        if f.name == "more" or f.name not in obj:
            continue
        value, hint = obj[f.name], hints[f.name]
        if not _is(value, hint):
            return f"{f.name!r} is a {type(value).__name__}"
    for key in ("metrics", "metrics_std"):  # checked above as dicts; their values are numbers
        bad = next((k for k, v in (obj.get(key) or {}).items() if not _is(v, float)), None)
        if bad is not None:
            return f"metric {short(str(bad), 60)!r} is a {type(obj[key][bad]).__name__}, not a number"
    return None


@functools.cache
def _hints() -> dict[str, Any]:  # resolved once: a report checks every record of results.jsonl
    return get_type_hints(Record)


def _is(value: Any, hint: Any) -> bool:
    """Whether ``value`` (parsed JSON) has type ``hint``: unions, dict/list with their value types, and
    JSON's numbers (an int is a float; a bool is neither)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, UnionType):
        return any(_is(value, a) for a in args)
    if hint is type(None):
        return value is None
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    if origin is dict:
        return isinstance(value, dict) and (not args or args[1] is float or all(_is(v, args[1]) for v in value.values()))
    if origin is list:
        return isinstance(value, list) and all(_is(v, args[0]) for v in value)
    return isinstance(value, hint)


def fields_table() -> str:
    """PROTOCOLS.md's "Results" field table (tests/transfer/test_records.py checks the doc holds exactly this)."""
    hints = _hints()
    rows = ["| field | type | written by | meaning |", "|---|---|---|---|"]
    for f in fields(Record):
        if f.name != "more":
            hint = hints[f.name]
            kind = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "").replace("NoneType", "None")
            kind = kind.replace(" | ", " or ")  # a bar would split the Markdown cell
            rows.append(f"| `{f.name}` | `{kind}` | {f.metadata['by']} | {f.metadata['meaning']} |")
    return "\n".join(rows)
