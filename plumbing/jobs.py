"""The one job runner, on submitit: local processes or SLURM jobs, for run_all, the study, the demo and
pretraining (``python -m mast.pretrain --launcher slurm``).

A job (:class:`JobSpec`) is a command line with environment defaults, resources, a log file and
dependencies; a distributed one (pretraining) runs in every SLURM task with ``torch.distributed``
set up from the SLURM environment, and is requeued with ``--resume auto`` on preemption or near its
time limit (SIGUSR2), at most ``requeues`` times, continuing from the run's own checkpoint. :class:`Runner` runs a list of them through submitit's ``LocalExecutor`` (``--jobs N``
at a time, per-job time limit, heartbeat lines) or ``SlurmExecutor`` (everything submitted at once,
dependencies as ``afterok``, the time limit is the job's ``--time``), and hands each finished job's
:class:`Outcome` to the caller, who turns it into a record.

Safety: submitit keeps each job's pickled call and result in ``OUT/.submitit`` (mode 0700). Nothing
here reads a result pickle: a job's outcome is the JSON exit status its own command wrote
(``<log>.exit.json``) and, on SLURM, the job's state from ``sacct``.
Re-runs: SLURM job ids are kept in ``OUT/jobs.json`` (:class:`JobStore`: written atomically, read
defensively, with the folder's token that names every job); an id is trusted only while the cluster
gives it this folder's job name; a job still queued or running is waited for, never submitted twice; a
finished one is collected (never with ``--force``); a job id the cluster no longer knows, or whose exit
status is lost, is submitted again, never counted as done. ``OUT/.submitit`` is never followed
through a symlink.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from plumbing import PROJECT
from plumbing.job_command import Command
from plumbing.job_store import JobStore, LaunchError, controller_output
from plumbing.safe_read import short
from plumbing.slurm import (ACTIVE, CLUSTER_ENDED, CPU_ONLY_HINT, SETUP as SLURM_SETUP, FolderError, cluster_jobs,
                            cluster_states, private_folder, sbatch_message)
from plumbing.submitit_import import import_submitit

__all__ = ["JobSpec", "LaunchError", "Outcome", "Resources", "Runner", "SlurmOptions"]
HEARTBEAT_S = 60.0
SACCT_POLL_S = 3.0  # one sacct call per poll for all running jobs
UNKNOWN_GRACE_S = 60.0  # a just-submitted job may not be in sacct yet


@dataclass
class Resources:
    """What one job needs. ``gpus`` and ``tasks_per_node`` are per node; ``timeout_min`` None = no limit."""
    gpus: int = 0
    cpus: int = 1
    mem_gb: float | None = None
    timeout_min: float | None = None
    nodes: int = 1
    tasks_per_node: int = 1


@dataclass
class SlurmOptions:
    """``--slurm-*`` options (and a suite's ``slurm:`` section). ``time_min`` overrides every job's limit."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int | None = None
    cpu_only: bool = False  # a cluster without GPUs (tests, scripts/slurm_local.sh): request none
    cpus_per_gpu: int | None = None      # default 4 (1 per job when cpu_only)
    mem_per_gpu_gb: float | None = None  # default: the partition's

    def resources(self, gpus: int, timeout_min: float | None) -> Resources:
        """A one-node job with ``gpus`` GPUs (none when ``cpu_only``) and its CPUs and memory."""
        gpus = 0 if self.cpu_only else gpus
        cpus = (self.cpus_per_gpu or (1 if self.cpu_only else 4)) * max(gpus, 1)
        mem = self.mem_per_gpu_gb * max(gpus, 1) if self.mem_per_gpu_gb else None
        return Resources(gpus=gpus, cpus=int(cpus), mem_gb=mem, timeout_min=timeout_min)


@dataclass
class JobSpec:
    """One job: a command line, its log, what it needs and what it waits for. ``state`` is ``pending`` for a
    job to run; the caller may plan one as ``ok`` (kept from an earlier run: not run, done for its
    dependents); the runner sets ``running``, then ``ok``, ``failed`` or ``skipped`` (a dependency failed)."""
    key: str                       # stable identity across runs (jobs.json)
    label: str                     # what the terminal shows
    cmd: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)  # defaults: a variable the user set wins
    resources: Resources = field(default_factory=Resources)
    deps: list[str] = field(default_factory=list)      # keys that must finish ok first (SLURM: afterok)
    state: str = "pending"
    estimate_s: float = 0.0                            # expected seconds (the caller's progress lines)
    prepare: Callable[[], None] | None = None          # called just before each (re-)submission
    new_session: bool = False                          # the command in its own session (fair CPU share)
    distributed: bool = False                          # SLURM: one process per task, torch.distributed set up
    requeues: int = 0                                  # SLURM: requeued with --resume auto on SIGUSR2, this often
    signal_delay_s: int = 120                          # SLURM: SIGUSR2 this long before the time limit

    @property
    def exit_file(self) -> Path:
        return self.log.with_name(self.log.name + ".exit.json")


@dataclass
class Outcome:
    """How a job ended: ``exit_code`` from its own exit file, ``cluster_state`` when SLURM ended it."""
    key: str
    exit_code: int | None
    timed_out: bool = False
    cluster_state: str | None = None
    job_id: str | None = None
    wall_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.cluster_state is None

    def describe(self, timeout_min: float | None) -> str:
        if self.cluster_state:
            return f"ended by the cluster: {self.cluster_state} (SLURM job {self.job_id})"
        if self.timed_out:
            return f"timed out after {timeout_min} min"
        return f"exit code {self.exit_code}" if self.exit_code is not None else "no exit status (job lost)"


def read_exit(spec: JobSpec) -> dict | None:
    try:
        data = json.loads(spec.exit_file.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


@dataclass
class _Running:
    spec: JobSpec
    job: object                      # a submitit Job
    job_id: str
    t0: float = field(default_factory=time.monotonic)
    last_beat: float = field(default_factory=time.monotonic)


class Runner:
    """Runs :class:`JobSpec` s through submitit; ``on_done(spec, outcome) -> str`` turns each into a record."""

    def __init__(self, out: Path, launcher: str = "local", jobs: int = 1, slurm: SlurmOptions | None = None,
                 wait: bool = True, poll_s: float = 1.0, force: bool = False, folder: Path | None = None,
                 cpu_hint: str = CPU_ONLY_HINT):
        """``out`` holds ``jobs.json``; ``folder`` submitit's files (default ``out/.submitit``); ``cpu_hint``
        the option that asks for no GPUs, named when sbatch refuses a GPU request."""
        if launcher not in ("local", "slurm"):
            raise LaunchError(f"--launcher {launcher}: expected local or slurm")
        if launcher == "slurm" and shutil.which("sbatch") is None:
            raise LaunchError("--launcher slurm: sbatch is not on PATH (expected a SLURM submit host; "
                              "scripts/slurm_local.sh starts a one-node cluster here)")
        if launcher == "local" and not wait:
            raise LaunchError("--no-wait needs --launcher slurm (local jobs are this process's children)")
        self.out, self.launcher, self.parallel = out, launcher, max(1, jobs)
        self.slurm, self.wait, self.poll_s, self.force = slurm or SlurmOptions(), wait, poll_s, force
        self.cpu_hint = cpu_hint
        try:
            self.folder = private_folder(folder or out / ".submitit")
        except FolderError as e:
            raise LaunchError(str(e)) from None
        self.store = JobStore(out) if launcher == "slurm" else None
        self.state: dict[str, str] = {}   # pending | running | ok | failed | skipped
        self.running: dict[str, _Running] = {}

    # ---- the loop -------------------------------------------------------------------------------
    def run(self, specs: list[JobSpec], on_done: Callable[[JobSpec, Outcome], str]) -> list[str]:
        """Run (or submit) every spec; returns the keys still on the cluster (``--no-wait``, Ctrl-C)."""
        self.state = {s.key: s.state for s in specs}  # a key no spec has counts as done (ok)
        self.specs, self.on_done = [s for s in specs if s.state == "pending"], on_done
        self.number = {s.key: i for i, s in enumerate(self.specs, 1)}
        if self.launcher == "slurm":
            self._adopt()
        try:
            while True:
                self._skip_orphans()
                self._start_ready()
                if not self.running or not self.wait:
                    break
                time.sleep(self.poll_s if self.launcher == "local" else max(self.poll_s, SACCT_POLL_S))
                self._poll()
        except KeyboardInterrupt:
            self._interrupted()
            raise
        if self.running:
            ids = " ".join(r.job_id for r in self.running.values())
            print(f"{len(self.running)} job(s) on the cluster ({ids}); run the same command again to collect them",
                  flush=True)
        return list(self.running)

    def _say(self, spec: JobSpec, text: str) -> None:
        print(f"[{self.number[spec.key]}/{len(self.specs)}] {spec.label} {text}", flush=True)

    def _skip_orphans(self) -> None:
        for spec in self.specs:
            if self.state[spec.key] == "pending" and any(self.state.get(d, "ok") not in ("ok", "running", "pending")
                                                         for d in spec.deps):
                self.state[spec.key] = spec.state = "skipped"
                self._say(spec, f"skipped: {', '.join(spec.deps)} did not succeed")

    def _start_ready(self) -> None:
        for spec in self.specs:
            if self.state[spec.key] != "pending":
                continue
            deps = [self.state.get(d, "ok") for d in spec.deps]
            if self.launcher == "local":
                if len(self.running) >= self.parallel or any(s != "ok" for s in deps):
                    continue
            elif any(s not in ("ok", "running") for s in deps):
                continue
            self._submit(spec)

    def _poll(self) -> None:
        now = time.monotonic()
        if self.launcher == "slurm":
            states = cluster_states([r.job_id for r in self.running.values()])
        for key, run in list(self.running.items()):
            if self.launcher == "slurm":
                state = states.get(run.job_id, "UNKNOWN")
                if state in ACTIVE or (state == "UNKNOWN" and now - run.t0 < UNKNOWN_GRACE_S):
                    self._heartbeat(run, now, state)
                    continue
                self._collect(run.spec, run.job_id, state, now - run.t0)
            elif run.job.done():
                self._collect(run.spec, run.job_id, None, now - run.t0)
            else:
                self._heartbeat(run, now, "running")

    def _heartbeat(self, run: _Running, now: float, state: str) -> None:
        if now - run.last_beat >= HEARTBEAT_S:
            run.last_beat = now
            self._say(run.spec, f"{state.lower()} {_elapsed(now - run.t0)}  {_last_line(run.spec.log)}")

    # ---- submission and collection ----------------------------------------------------------------
    def _adopt(self) -> None:
        """Jobs of an earlier call: wait for those queued or running, collect those finished. An id is
        trusted only while the cluster names it this folder's job (token + key); ``--force`` collects
        nothing (a re-run never reuses an earlier outcome) and refuses while an earlier copy still runs."""
        known = {s.key: str(self.store.jobs[s.key]["job_id"]) for s in self.specs if s.key in self.store.jobs}
        jobs = cluster_jobs(list(known.values()))
        for spec in self.specs:
            if spec.key not in known:
                continue
            job_id = known[spec.key]
            state, name = jobs.get(job_id, ("UNKNOWN", ""))
            if state == "UNKNOWN":
                self.store.drop(spec.key)
                self._say(spec, f"SLURM job {job_id} is unknown to the cluster; submitting it again")
            elif name != self.store.name(spec.key):
                self.store.drop(spec.key)
                self._say(spec, f"SLURM job {job_id} is not this folder's job (named {short(name, 60)!r}, expected "
                                f"{self.store.name(spec.key)!r}); not adopted, submitting the task again")
            elif state in ACTIVE and self.force:
                raise LaunchError(f"{spec.label}: SLURM job {job_id} of an earlier run is still {state}; --force would "
                                  f"run a second copy into the same folder: scancel {job_id} or wait for it")
            elif state in ACTIVE:
                self.running[spec.key] = _Running(spec, None, job_id)
                self.state[spec.key] = spec.state = "running"
                self._say(spec, f"already on the cluster: SLURM job {job_id} ({state})")
            elif self.force:
                self.store.drop(spec.key)
                self._say(spec, f"--force: the outcome of SLURM job {job_id} ({state}) is not reused; submitting again")
            else:
                self._collect(spec, job_id, state, None)
                if self.state[spec.key] != "ok":
                    self.state[spec.key] = spec.state = "pending"  # recorded with its cause; submitted again

    def _submit(self, spec: JobSpec) -> None:
        if spec.prepare is not None:
            spec.prepare()
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        spec.exit_file.unlink(missing_ok=True)
        local = self.launcher == "local"
        limit = spec.resources.timeout_min
        command = Command(spec.cmd, spec.env, str(spec.log), str(spec.exit_file),
                          timeout_s=60 * limit if local and limit else None,
                          cuda_visible=os.environ.get("CUDA_VISIBLE_DEVICES") if local else "keep",
                          runner_pid=os.getpid() if local else None, new_session=spec.new_session,
                          distributed=spec.distributed and not local, requeue=bool(spec.requeues) and not local)
        executor = self._local_executor(spec) if local else self._slurm_executor(spec)
        try:
            # LocalExecutor's controller inherits this environment; submitit echoes sbatch's stderr: one line here
            with _project_importable(), redirect_stderr(io.StringIO()), controller_output(self.folder, local):
                job = executor.submit(command)
        except Exception as e:  # sbatch refused: its own message, one line; nothing recorded as failed
            raise LaunchError(f"{spec.label}: sbatch refused the job: {sbatch_message(e, self.cpu_hint)}") from None
        run = _Running(spec, job, str(job.job_id))
        self.running[spec.key], self.state[spec.key] = run, "running"
        spec.state = "running"
        if local:
            self._say(spec, "started")
            return
        try:
            self.store.put(spec.key, run.job_id)
        except OSError as e:  # an id that cannot be recorded would be orphaned: the job is cancelled
            subprocess.run(["scancel", run.job_id], capture_output=True)
            del self.running[spec.key]
            raise LaunchError(f"{spec.label}: SLURM job {run.job_id} cancelled: its id could not be recorded in "
                              f"{self.store.path} ({e})") from None
        self._say(spec, f"submitted: SLURM job {run.job_id}")

    def _local_executor(self, spec: JobSpec):
        submitit = import_submitit()
        executor = submitit.LocalExecutor(folder=self.folder / "%j", max_num_timeout=0)
        limit = spec.resources.timeout_min
        # no ``setup`` lines here: they would put a shell between the job and its cancel signal
        executor.update_parameters(timeout_min=(limit + 5) if limit else 60 * 24 * 365, stderr_to_stdout=True,
                                   tasks_per_node=1)
        return executor

    def _slurm_executor(self, spec: JobSpec):
        submitit = import_submitit()
        r, o = spec.resources, self.slurm
        params: dict = dict(job_name=self.store.name(spec.key),
                            # sbatch reads 0 as no limit: a limit is at least one minute
                            time=max(1, math.ceil(o.time_min or r.timeout_min or 24 * 60)), nodes=r.nodes,
                            ntasks_per_node=r.tasks_per_node, cpus_per_task=r.cpus, stderr_to_stdout=True, setup=SLURM_SETUP)
        if r.gpus:
            params["gpus_per_node"] = r.gpus
        if spec.requeues:  # submitit's SIGUSR2 handler requeues; the job's Command.checkpoint says how
            params["signal_delay_s"] = spec.signal_delay_s
        if r.mem_gb:
            params["mem"] = f"{int(-(-r.mem_gb // 1))}G"
        params.update({k: v for k, v in (("partition", o.partition), ("account", o.account), ("qos", o.qos),
                                         ("constraint", o.constraint)) if v})
        after = [self.running[d].job_id for d in spec.deps if self.state.get(d) == "running"]
        if after:
            params["dependency"] = "afterok:" + ":".join(after)
            params["additional_parameters"] = {"kill-on-invalid-dep": "yes"}
        executor = submitit.SlurmExecutor(folder=self.folder / "%j", max_num_timeout=spec.requeues)
        executor.update_parameters(**params)
        return executor

    def _collect(self, spec: JobSpec, job_id: str | None, cluster_state: str | None, elapsed: float | None) -> None:
        """The job's outcome (its exit file; the cluster's state when the cluster ended it) -> on_done."""
        self.running.pop(spec.key, None)
        done = read_exit(spec) or {}
        ended = cluster_state if cluster_state in CLUSTER_ENDED else None
        outcome = Outcome(spec.key, done.get("exit_code"), bool(done.get("timed_out")), ended, job_id,
                          done.get("wall_s", round(elapsed, 1) if elapsed else None))
        if cluster_state and not ended and cluster_state not in ("COMPLETED", "FAILED"):
            outcome.cluster_state = cluster_state  # any other end state: never counted as done
        self.state[spec.key] = spec.state = "ok" if outcome.ok else "failed"
        self._say(spec, self.on_done(spec, outcome))
        if self.launcher == "slurm":
            self.store.drop(spec.key)

    def _interrupted(self) -> None:
        running = list(self.running.values())
        if self.launcher == "local":
            for run in running:
                run.job.cancel(check=False)
            for run in running:
                proc = getattr(run.job, "_process", None)
                if proc is not None:
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            print(f"\ninterrupted: stopped {', '.join(r.spec.label for r in running) or 'nothing'}",
                  file=sys.stderr, flush=True)
        else:
            print(f"\ninterrupted: {len(running)} SLURM job(s) stay on the cluster "
                  f"({' '.join(r.job_id for r in running)}); re-run to collect them, or scancel them",
                  file=sys.stderr, flush=True)


@contextmanager
def _project_importable() -> Iterator[None]:
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT), previous) if p)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous


def _last_line(log: Path) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 2000))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        return ("| " + lines[-1][:120]) if lines else ""
    except OSError:
        return ""


def _elapsed(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"
