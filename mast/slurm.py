"""SLURM through submitit: pretraining as one job (``python -m mast.pretrain --launcher slurm``), job states.

    python -m mast.pretrain --launcher slurm --nodes 2 --gpus-per-node 8 [--slurm-partition P]
        [--slurm-account A] [--slurm-qos Q] [--slurm-constraint C] [--slurm-time MIN] [--wait] \\
        --config imagenet_r50 --name r50_mast

One SLURM task per GPU (``--tasks-per-node`` for CPU runs: gloo), ``torch.distributed`` set up from
the SLURM environment (``submitit.helpers.TorchDistributedEnvironment``; the trainer then reads
RANK / WORLD_SIZE / LOCAL_RANK as under torchrun). When the job is preempted or nears its time limit,
SLURM sends SIGUSR2 (``--signal=USR2@<delay>``); submitit calls :meth:`PretrainJob.checkpoint`, which
requeues the same command with ``--resume auto``: the run continues from its last ``last.pth``.

The job folder (submitit's pickles and per-task logs) is ``OUT_DIR/NAME/slurm`` with mode 0700;
nothing here reads a result pickle: job states come from ``sacct``.
"""
from __future__ import annotations

import argparse
import importlib
import io
import os
import shutil
import stat
import subprocess
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path

from mast.argtypes import positive_minutes

PROJECT = Path(__file__).resolve().parents[1]
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD",
          "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}
#: States in which the cluster, not the program, ended the job.
CLUSTER_ENDED = {"TIMEOUT", "PREEMPTED", "NODE_FAIL", "CANCELLED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
SETUP = [f"export PYTHONPATH={PROJECT}${{PYTHONPATH:+:$PYTHONPATH}}"]


def cluster_states(job_ids: list[str]) -> dict[str, str]:
    """``{job id: state}`` from ``sacct`` (``CANCELLED by 0`` -> ``CANCELLED``), ``squeue`` for ids not
    there yet, ``UNKNOWN`` for ids the cluster does not know."""
    return {jid: state for jid, (state, _) in cluster_jobs(job_ids).items()}


def cluster_jobs(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """``{job id: (state, job name)}`` (:func:`cluster_states`; the name is ``""`` for an unknown id).

    The name is what lets a caller check that a recorded id is still its own job: ids are reused by a
    new cluster, and a file can name any job."""
    if not job_ids:
        return {}
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,JobName,State", "-j", ",".join(job_ids)],
                         capture_output=True, text=True)
    jobs: dict[str, tuple[str, str]] = {}
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= 3 and parts[0] in job_ids and parts[-1]:  # a name may hold "|": the state is last
            jobs[parts[0]] = (parts[-1].split()[0], "|".join(parts[1:-1]))
    # The controller's name wins: for a job that has just started, slurmdbd can hold a placeholder record
    # named "allocation" (a step reached the database before the job did), seen here under load
    known = _controller_jobs()
    for jid in job_ids:
        if jid in known:
            state, name = known[jid]
            jobs[jid] = (jobs[jid][0] if jid in jobs else state, name)
        elif jid not in jobs:
            jobs[jid] = ("UNKNOWN", "")
    return jobs


def _controller_jobs() -> dict[str, tuple[str, str]]:
    """``{job id: (state, job name)}`` of every job slurmctld still holds (finished ones for MinJobAge)."""
    q = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%j"], capture_output=True, text=True)
    jobs = {}
    for line in q.stdout.splitlines() if q.returncode == 0 else []:
        jid, _, rest = line.partition("|")
        state, _, name = rest.partition("|")
        if jid and state:
            jobs[jid] = (state, name)
    return jobs


#: What sbatch says when a job asks for GPUs (``--gpus-per-node``, ``--gres=gpu``) on a cluster that has none.
GRES_REFUSED = "invalid generic resource (gres) specification"
#: The options that ask for no GPUs: run_all / study / demo (transfer/orchestrate), and pretraining.
CPU_ONLY_HINT = "--slurm-cpu-only (or slurm: {cpu_only: true} in the suite) to request no GPUs"
PRETRAIN_CPU_HINT = "--gpus-per-node 0 (CPU tasks, gloo; --tasks-per-node N for several) to request no GPUs"


def sbatch_message(exc: BaseException, cpu_hint: str = CPU_ONLY_HINT) -> str:
    """sbatch's own error line out of submitit's exception text (one line); when sbatch refused a GPU
    request (a cluster without GPUs, e.g. scripts/slurm_local.sh's node), also the option that asks for none."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower() and ln.strip()]
    picked = [ln for ln in lines if ln.startswith("sbatch:")] or lines or [text.strip()]
    message = " ".join(" ".join(picked[:2]).split())[:300]
    if GRES_REFUSED in text.lower():
        message += f"; this cluster has no GPUs of that kind: rerun with {cpu_hint}"
    return message


class FolderError(ValueError):
    """A job folder that is not this program's own folder (a symlink, a file): one line, nothing touched."""


def private_folder(folder: Path) -> Path:
    """``folder`` created with mode 0700: submitit's pickles there are readable by this user only.

    Never followed through a symlink (that would chmod and fill another folder) and never a file:
    both are refused before anything is written."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise FolderError(f"{folder}: cannot be created ({e.strerror})") from None
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode):
        raise FolderError(f"{folder}: is a symlink; the job folder is never followed elsewhere (it would be "
                          "chmod-ed and filled there): remove the link")
    if not stat.S_ISDIR(info.st_mode):
        raise FolderError(f"{folder}: exists and is not a folder (the job folder of submitit's files): move it away")
    if info.st_uid != os.getuid():
        raise FolderError(f"{folder}: belongs to another user (uid {info.st_uid}); it is not this run's job folder")
    os.chmod(folder, 0o700, follow_symlinks=False)
    return folder


def add_launcher_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SLURM (--launcher slurm; docs/CLUSTER.md)")
    g.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="local: this process (or torchrun); slurm: one SLURM job, one task per GPU")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--gpus-per-node", type=int, default=0)
    g.add_argument("--tasks-per-node", type=int, default=None,
                   help="processes per node (default: --gpus-per-node, at least 1; CPU runs use gloo)")
    g.add_argument("--cpus-per-task", type=int, default=None, help="default 4 with GPUs, else 1")
    g.add_argument("--slurm-partition", default=None)
    g.add_argument("--slurm-account", default=None)
    g.add_argument("--slurm-qos", default=None)
    g.add_argument("--slurm-constraint", default=None)
    g.add_argument("--slurm-time", type=positive_minutes, default=24 * 60, metavar="MIN", help="time limit per job (default 24 h)")
    g.add_argument("--slurm-signal-delay", type=int, default=120, metavar="S",
                   help="SIGUSR2 this many seconds before the time limit: requeue and resume (default 120)")
    g.add_argument("--max-requeues", type=int, default=10, help="time-limit requeues before giving up (default 10)")
    g.add_argument("--wait", action="store_true", help="wait for the job to end; exit 0 only if it COMPLETED")


class PretrainJob:
    """The pretraining command, run in every SLURM task; requeued with ``--resume auto`` on SIGUSR2."""

    def __init__(self, argv: list[str], entry: str = "mast.pretrain"):
        self.argv, self.entry = list(argv), entry  # the module whose main(argv) runs in each task

    def __call__(self) -> int:
        import submitit

        env = submitit.helpers.TorchDistributedEnvironment()
        if env._job_env.num_nodes == 1:  # one node: rendezvous on the loopback interface
            env.master_addr = "127.0.0.1"
        env.export(set_cuda_visible_devices=False)
        code = importlib.import_module(self.entry).main(self.argv)
        if code:
            raise SystemExit(code)
        return code

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on preemption / time limit: the same run again, continuing from last.pth."""
        import submitit

        argv = self.argv if "--resume" in self.argv else [*self.argv, "--resume", "auto"]
        return submitit.helpers.DelayedSubmission(PretrainJob(argv, self.entry))


def submit_pretraining(args: argparse.Namespace, argv: list[str], run_dir: Path) -> int:
    """Submit the run (already validated here); print the job id; with ``--wait`` follow it to its end."""
    if shutil.which("sbatch") is None:
        print("error: --launcher slurm: sbatch is not on PATH (expected a SLURM submit host; "
              "scripts/slurm_local.sh starts a one-node cluster here)", file=sys.stderr)
        return 2
    import submitit

    tasks = args.tasks_per_node or max(args.gpus_per_node, 1)
    try:
        folder = private_folder(run_dir / "slurm")
    except FolderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=args.max_requeues)
    params = dict(job_name=f"mast_{run_dir.name}", nodes=args.nodes, ntasks_per_node=tasks,
                  cpus_per_task=args.cpus_per_task or (4 if args.gpus_per_node else 1), time=args.slurm_time,
                  signal_delay_s=args.slurm_signal_delay, setup=SETUP)
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    params.update({k: v for k, v in (("partition", args.slurm_partition), ("account", args.slurm_account),
                                     ("qos", args.slurm_qos), ("constraint", args.slurm_constraint)) if v})
    executor.update_parameters(**params)
    try:
        with redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr; the one line is below
            job = executor.submit(PretrainJob(argv))
    except Exception as e:
        print(f"error: sbatch refused the job: {sbatch_message(e, PRETRAIN_CPU_HINT)}", file=sys.stderr)
        return 2
    print(f"submitted SLURM job {job.job_id}: {args.nodes} node(s) x {tasks} task(s) -> {run_dir} "
          f"(logs {folder}/{job.job_id}_<task>_log.out)", flush=True)
    return wait_for(str(job.job_id)) if args.wait else 0


def wait_for(job_id: str, poll_s: float = 2.0) -> int:
    """Follow the job through requeues to its end: 0 when COMPLETED, else one line with the state."""
    seen_unknown = time.monotonic()
    try:
        while True:
            state = cluster_states([job_id])[job_id]
            if state in ACTIVE or (state == "UNKNOWN" and time.monotonic() - seen_unknown < 60):
                time.sleep(poll_s)
                continue
            if state == "COMPLETED":
                print(f"SLURM job {job_id}: COMPLETED", flush=True)
                return 0
            print(f"error: SLURM job {job_id} ended {state}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print(f"stopped waiting; SLURM job {job_id} goes on (scancel {job_id} to stop it)", file=sys.stderr)
        return 130
