"""What the job runner (plumbing/jobs.py) asks the cluster: job states and names (``sacct``, ``squeue``),
sbatch's own error line, and the private job folder submitit writes its pickles to (mode 0700).

Nothing here reads a result pickle: job states come from ``sacct`` and the controller.
"""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from plumbing import PROJECT

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
#: The option that asks for no GPUs in run_all / study / demo (pretraining names its own: mast/pretrain_submit.py).
CPU_ONLY_HINT = "--slurm-cpu-only (or slurm: {cpu_only: true} in the suite) to request no GPUs"


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
