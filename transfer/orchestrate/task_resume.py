"""When a re-submitted task continues from its own last checkpoint (``--resume``) instead of starting over.

A detection or segmentation task that the cluster ended (time limit, preemption, node failure,
``scancel``: the record's ``cluster_state``) or that ran past its ``timeout_min`` (``timed_out``)
leaves the checkpoints its engine saved in its output folder. Re-submitted by run_all, it resumes
from them when all of these hold, read from the earlier attempt's record (set aside as
``record.prev.json`` just before the re-submission):

- it failed with a ``cluster_state`` or ``timed_out``, not with an error of its own (a crash or a
  NaN would happen again: it starts over);
- it was the same task: same ``task_config_hash``, same checkpoint ``ckpt_sha256``, same ``--backbone``;
- the folder holds an engine checkpoint: detectron2's ``seed_S/last_checkpoint``, mmengine's
  ``work/last_checkpoint`` (classification: ``seed_S/work/last_checkpoint``, one Runner per seed)
  (a fresh start deletes these, so they are always the latest attempt's);
- the user did not ask for ``--force``.

The decision is written to ``OUT/<ckpt>/<task>/resume.json`` before the job starts and removed
before a job that starts over, so whoever collects the job (this run_all, or a later one after
``--no-wait``) can say in the record what it continued from (``resumed_from``).
"""

from __future__ import annotations

import json
from pathlib import Path

from plumbing.atomic import write_text_atomic
from plumbing.safe_read import UnreadableFile, read_regular_text

__all__ = ["RESUMABLE", "RESUME_FILE", "resume_point", "mark", "read_mark"]

RESUMABLE = ("detection", "segmentation", "classification")
RESUME_FILE = "resume.json"
PREVIOUS_RECORD = "record.prev.json"
# where each engine's own checkpointer names its latest file
ENGINE_POINTERS = {"detection": "seed_*/last_checkpoint", "segmentation": "work/last_checkpoint",
                   "classification": "seed_*/work/last_checkpoint"}


def resume_point(out_dir: Path, task: str, config_hash: str, ckpt_sha256: str, backbone: str | None,
                 force: bool) -> dict | None:
    """What a re-submission of this task continues from (``resumed_from``), or None to start over."""
    if force or task not in RESUMABLE:
        return None
    try:
        prev = json.loads(read_regular_text(out_dir / PREVIOUS_RECORD, "record", 64 << 20))
    except (UnreadableFile, ValueError, RecursionError):
        return None
    if not isinstance(prev, dict) or prev.get("status") != "failed":
        return None
    cause = prev.get("cluster_state") or ("TIMEOUT (timeout_min)" if prev.get("timed_out") else None)
    same = (prev.get("task_config_hash") == config_hash and prev.get("ckpt_sha256") == ckpt_sha256
            and prev.get("backbone_option") == backbone)
    pointers = [p for p in sorted(out_dir.glob(ENGINE_POINTERS[task])) if p.is_file()]  # never a FIFO (a hang)
    if not (cause and same and pointers):
        return None
    try:
        names = [read_regular_text(p, "pointer", 4096).strip() for p in pointers]
    except UnreadableFile:
        return None  # the task itself then says what is wrong with it
    return {"cause": cause, "slurm_job_id": prev.get("slurm_job_id"),
            "checkpoints": [str(p.parent / name) for p, name in zip(pointers, names)]}


def mark(out_dir: Path, point: dict | None) -> None:
    """Write (or, starting over, remove) ``resume.json`` for the job about to start."""
    path = out_dir / RESUME_FILE
    if point is None:
        path.unlink(missing_ok=True)
    else:
        write_text_atomic(path, json.dumps(point, indent=1))


def read_mark(out_dir: Path) -> dict | None:
    """The ``resume.json`` of the job being collected, or None when it started over."""
    try:
        point = json.loads(read_regular_text(out_dir / RESUME_FILE, "resume mark", 1 << 20))
    except (UnreadableFile, ValueError, RecursionError):
        return None
    return point if isinstance(point, dict) else None
