"""The job runner's own files: ``OUT/jobs.json`` (:class:`JobStore`) and where submitit's local
controller writes (:func:`controller_output`). The runner owns what it records: an id is trusted only
while the cluster gives it the name this folder's token makes, and the file is written atomically and
read defensively (a damaged, truncated, foreign or symlinked file is one line before anything is submitted).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from plumbing.atomic import write_text_atomic
from plumbing.safe_read import UnreadableFile, read_regular_text, short

_TOKEN = re.compile(r"[0-9a-f]{12}")
_JOB_ID = re.compile(r"[0-9]{1,12}(_[0-9]{1,9})?")


class LaunchError(RuntimeError):
    """The launcher cannot submit (sbatch missing, an option the cluster rejects): one line, nothing recorded."""


class JobStore:
    """``OUT/jobs.json``: ``{"token": T, "jobs": {key: {"job_id", "name", "submitted"}}}``, the SLURM jobs of
    this folder not yet collected. The token is this folder's own: every job it submits is named
    ``mast-<token>-<key>``, so a recorded id is trusted only while the cluster gives it that name
    (:meth:`Runner._adopt`). Written atomically; read defensively: a damaged, truncated, foreign or
    symlinked file is one line (:class:`LaunchError`) before anything is submitted, never a silent resubmission.
    """

    MAX_BYTES = 16 << 20

    def __init__(self, folder: Path):
        self.path = folder / "jobs.json"
        self.token, self.jobs = secrets.token_hex(6), {}
        if os.path.lexists(self.path):
            self.token, self.jobs = self._read()
        else:  # checked before any job is submitted, so that recording an id can not fail after sbatch
            self._check_writable(folder)

    def _read(self) -> tuple[str, dict[str, dict]]:
        fix = ("it lists the SLURM jobs an earlier run submitted: check them (squeue --me; sacct), scancel any "
               "still running, then move the file away (their tasks are then submitted again)")
        try:
            data = json.loads(read_regular_text(self.path, "job list", self.MAX_BYTES, follow=False))
        except UnreadableFile as e:
            raise LaunchError(f"{e}; {fix}") from None
        except (ValueError, RecursionError) as e:
            raise LaunchError(f"job list {self.path}: damaged or truncated JSON ({short(e, 80)}); {fix}") from None
        if data == {}:  # an earlier version's list with every job collected: nothing to adopt
            return secrets.token_hex(6), {}
        if not isinstance(data, dict) or not isinstance(data.get("token"), str) or not isinstance(data.get("jobs"), dict):
            raise LaunchError(f"job list {self.path}: expected {{\"token\": ..., \"jobs\": {{...}}}}, found "
                              f"{short(json.dumps(data), 80)}; {fix}")
        token, jobs = data["token"], data["jobs"]
        if not _TOKEN.fullmatch(token):
            raise LaunchError(f"job list {self.path}: token {short(token, 40)!r} is not one this runner writes; {fix}")
        for key, entry in jobs.items():
            if not isinstance(entry, dict) or not _JOB_ID.fullmatch(str(entry.get("job_id", ""))):
                raise LaunchError(f"job list {self.path}: the entry of {short(key, 80)!r} has no SLURM job id "
                                  f"(found {short(json.dumps(entry), 80)}); {fix}")
        return token, jobs

    def _check_writable(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".jobs.json.{os.getpid()}.probe"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise LaunchError(f"job list {self.path}: cannot be written ({e.strerror}); SLURM job ids could "
                              "not be recorded, so nothing is submitted") from None

    def name(self, key: str) -> str:
        """The SLURM job name of task ``key`` from this folder: the token and a readable key."""
        readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
        return f"mast-{self.token}-{readable}"[:100]

    def put(self, key: str, job_id: str) -> None:
        self.jobs[key] = {"job_id": job_id, "name": self.name(key), "submitted": time.time()}
        self._save()

    def drop(self, key: str) -> None:
        if self.jobs.pop(key, None) is not None:
            self._save()

    def _save(self) -> None:
        write_text_atomic(self.path, json.dumps({"token": self.token, "jobs": self.jobs}, indent=1, sort_keys=True)
                          + "\n")


@contextmanager
def controller_output(folder: Path, local: bool) -> Iterator[None]:
    """submitit's local controller (a child process) inherits stdout/stderr: sent to
    ``.submitit/controllers.log`` instead, so that its KeyboardInterrupt tracebacks on Ctrl-C or
    SIGTERM (it gets SIGINT from the terminal and again from the cancel) never reach the terminal."""
    if not local:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(folder / "controllers.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)
