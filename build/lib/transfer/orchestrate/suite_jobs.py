"""The suite's jobs: one per (checkpoint, suite task), what each runs, asks the runner for and records.

``run_all`` plans them (:func:`plan`: an ``ok`` record with the same checkpoint sha256 and task config is
done), checks their datasets before anything starts (:func:`precheck`), hands them to the job runner
(``plumbing/jobs.py``) and completes each task's record with what it knows of the run (:func:`finish`,
``transfer.records.complete``). A task the cluster ended continues from its engine's checkpoint
(:func:`prepare`, ``transfer/orchestrate/task_resume.py``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from plumbing import PROJECT
from plumbing.jobs import JobSpec, Outcome, Resources, SlurmOptions
from transfer.orchestrate.resolve import Checkpoint
from transfer.orchestrate.suite import Suite, TaskSpec
from transfer.orchestrate.task_resume import mark, read_mark, resume_point
from transfer.records import Record, complete

TENSORBOARD_TASKS = ("detection", "segmentation")  # the task types with a --no-tensorboard


@dataclass
class Job:
    """One (checkpoint, suite task): run through the job runner (plumbing/jobs.py)."""
    ckpt: Checkpoint
    spec: TaskSpec
    out_dir: Path
    index: int = 0
    record: dict = field(default_factory=dict)
    tensorboard: bool = True  # False: the task's --no-tensorboard (run_all --no-tensorboard)

    @property
    def label(self) -> str:
        return f"{self.ckpt.label} · {self.spec.name}"

    @property
    def key(self) -> str:
        """Identity of this task's job in OUT/jobs.json: folder, task config and backbone choice."""
        return f"{self.out_dir.as_posix()}@{self.spec.config_hash[:12]}@{self.ckpt.backbone or ''}"


def plan(ckpts: list[Checkpoint], suite: Suite, out: Path, force: bool) -> tuple[list[Job], list[Job]]:
    """(jobs to run, jobs already done). Done = an ok record with the same name, ckpt sha256, config hash
    and --backbone."""
    from transfer.records import read_jsonl

    done_keys = {
        (r.get("name"), r.get("ckpt_sha256"), r.get("task_config_hash"), r.get("backbone_option"))
        for r in read_jsonl(out / "results.jsonl") if r.get("status") == "ok"
    }
    todo, done = [], []
    for ckpt in ckpts:
        for spec in suite.tasks:
            if spec.checkpoints == "trained" and ckpt.untrained:
                continue
            if not spec.takes(ckpt.family):  # a ViT task on a ResNet, or a ResNet config on a ViT
                continue
            job = Job(ckpt, spec, ckpt.task_dir(out, spec.name))
            key = (ckpt.name, ckpt.sha256, spec.config_hash, ckpt.backbone)
            (done if key in done_keys and not force else todo).append(job)
    for i, job in enumerate(todo, 1):
        job.index = i
    return todo, done


def job_command(job: Job) -> list[str]:
    """The task's command line: the suite entry's, plus the checkpoint's --backbone if one was given and
    ``--no-tensorboard`` where asked (not part of the task's config hash: it changes no result)."""
    cmd = job.spec.command(sys.executable, job.ckpt.ckpt_arg, job.out_dir)
    quiet = not job.tensorboard and job.spec.task in TENSORBOARD_TASKS
    return cmd + (["--backbone", job.ckpt.backbone] if job.ckpt.backbone else []) + (["--no-tensorboard"] if quiet else [])


def task_resources(spec: TaskSpec, slurm: SlurmOptions) -> Resources:
    """What a task's job asks for: detection and segmentation ``num_gpus`` GPUs on one node (their own
    launchers inside the job); probes one GPU; the time limit from ``timeout_min``."""
    gpus = int(spec.args.get("num_gpus", 1)) if spec.task in ("detection", "segmentation", "classification") else 1
    return slurm.resources(gpus, spec.timeout_min)


def set_aside(job: Job) -> None:
    """What a failed or forced earlier attempt left (its record, its traceback): kept, out of the new one's way."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    for name, aside in (("record.json", "record.prev.json"), ("traceback.txt", "traceback.prev.txt")):
        stale = job.out_dir / name
        if stale.exists():
            os.replace(stale, job.out_dir / aside)


def prepare(job: Job, spec: JobSpec | None = None, force: bool = False) -> None:
    """Just before (re-)submission: what an earlier attempt left is set aside; a fresh log. A detection or
    segmentation task the cluster ended continues from its own checkpoint (``--resume`` added to ``spec``'s
    command; transfer/orchestrate/task_resume.py says when)."""
    set_aside(job)
    (job.out_dir / "run_all.log").unlink(missing_ok=True)
    lazy = str(job.spec.args.get("config", "")).endswith(".py") and job.spec.task == "detection"  # ViTDet: no resume yet
    point = None if lazy else resume_point(job.out_dir, job.spec.task, job.spec.config_hash, job.ckpt.sha256,
                                           job.ckpt.backbone, force)
    mark(job.out_dir, point)
    if spec is not None:
        spec.cmd = job_command(job) + (["--resume"] if point else [])


def task_env(spec: TaskSpec) -> dict[str, str]:
    """The task's environment defaults: the suite's ``env`` (a variable the user set wins); the project
    importable (prepended to PYTHONPATH)."""
    return {**spec.env, "PYTHONPATH": str(PROJECT)}


def finish(job: Job, outcome: Outcome, root: Path | None = None, command: str | None = None) -> dict:
    """The task's record completed with run_all's fields (transfer.records.complete): a failed one if the
    process left none, or if the cluster ended the job / its exit status is lost (``cluster_state``)."""
    lost = bool(outcome.cluster_state or outcome.timed_out or outcome.exit_code is None)
    return complete(job.out_dir, known(job, outcome, lost, command), root,
                    outcome.describe(job.spec.timeout_min) if lost else None)


def known(job: Job, outcome: Outcome, lost: bool = False, command: str | None = None) -> Record:
    """What run_all knows of a task run, as record fields (the rest the task writes)."""
    ckpt, spec = job.ckpt, job.spec
    checkpoint = {"path": str(ckpt.path.resolve()), "sha256": ckpt.sha256, "arch": ckpt.arch, "method": ckpt.method,
                  "backbone": ckpt.chosen, "resolved": ckpt.reference}
    return Record(task=spec.task, dataset=str(spec.args.get("data", spec.args.get("config", ""))),
                  scale=spec.scale_label, checkpoint=checkpoint, method=ckpt.method, config={"args": spec.args},
                  name=ckpt.name, task_name=spec.name, task_config_hash=spec.config_hash, ckpt_sha256=ckpt.sha256,
                  backbone_option=ckpt.backbone, ckpt_backbone=ckpt.chosen, task_args=spec.args,
                  run_dir=str(job.out_dir), exit_code=outcome.exit_code, wall_s=outcome.wall_s,
                  seed_index=ckpt.seed_index, pretrain_seed=ckpt.pretrain_seed, command=command or None,
                  resumed_from=read_mark(job.out_dir), overrides=list(spec.overrides) or None, smoke=spec.smoke or None,
                  **(dict(cluster_state=outcome.cluster_state, slurm_job_id=outcome.job_id,
                          timed_out=outcome.timed_out) if lost else {}))


def precheck(todo: list[Job], results: Path, command: str | None = None) -> tuple[list[Job], list[dict]]:
    """The --check of every task to run, before anything starts (transfer.orchestrate.dataset_check.check_task).

    A task whose dataset is missing is recorded ``skipped``, one whose dataset its reader cannot
    open ``failed``, each with the check's line (the layout expected, the path tried); the rest run.
    """
    from transfer.orchestrate.dataset_check import check_task
    from transfer.records import append_jsonl

    verdicts = {}
    for job in todo:
        if job.spec.name not in verdicts:
            try:
                verdicts[job.spec.name] = check_task(job.spec)
            except Exception:  # noqa: BLE001 - a check that cannot run leaves the verdict to the task itself
                verdicts[job.spec.name] = None
    runnable, records = [], []
    for job in todo:
        verdict = verdicts[job.spec.name]
        if verdict is None or verdict.status == "found":
            runnable.append(job)
            continue
        print(f"[not started] {job.ckpt.label} · {verdict.line}", flush=True)
        set_aside(job)
        mark(job.out_dir, None)  # nothing runs: nothing resumed
        (job.out_dir / "run_all.log").write_text(f"not started: dataset check: {verdict.line}\n")
        status = "skipped" if verdict.status == "missing" else "failed"
        record = complete(job.out_dir, known(job, Outcome(job.key, 3 if status == "skipped" else 1), command=command), results.parent,
                          verdict=(status, f"dataset check: {verdict.detail}"))
        append_jsonl(results, record)
        records.append(record)
    for i, job in enumerate(runnable, 1):
        job.index = i
    return runnable, records
