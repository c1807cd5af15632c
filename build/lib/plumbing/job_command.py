"""What one job runs (plumbing/jobs.py submits it): a command line, its log, its JSON exit status.

submitit pickles a :class:`Command` into the job's private folder and calls it in the job. It runs
the command with the job's environment plus the spec's defaults, appends its output to the log, and
writes ``<log>.exit.json`` (exit code, timed out, wall time) atomically: the runner reads that JSON,
never submitit's result pickle. A non-zero exit fails the job too, so SLURM's ``afterok`` sees it.

A distributed command (pretraining on SLURM) runs in every SLURM task with ``torch.distributed`` set up
from the SLURM environment (``submitit.helpers.TorchDistributedEnvironment``: the command then reads
RANK / WORLD_SIZE / LOCAL_RANK as under torchrun); task 0 writes the log and the exit status, task N
``<log>.taskN``. A requeueable one keeps submitit's SIGUSR2 handler: on preemption or near the time
limit submitit calls :meth:`Command.checkpoint`, which requeues the same command with ``--resume auto``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace

from plumbing.atomic import write_text_atomic


@dataclass
class Command:
    """What a job runs (pickled by submitit, run in the job): the command, its log, its JSON exit status."""
    cmd: list[str]
    env: dict[str, str]
    log: str
    exit_file: str
    timeout_s: float | None = None            # local only: on SLURM the cluster enforces --time
    cuda_visible: str | None = "keep"         # local only: the submitter's CUDA_VISIBLE_DEVICES
    runner_pid: int | None = None             # local only: stop when this process dies (kill -9 included)
    new_session: bool = False
    distributed: bool = False                 # SLURM: torch.distributed from the SLURM environment
    requeue: bool = False                     # SLURM: SIGUSR2 requeues with --resume auto (checkpoint)

    def __call__(self) -> int:
        rank = _export_distributed() if self.distributed else 0
        env = dict(os.environ)
        for key, value in self.env.items():
            if key == "PYTHONPATH":
                env[key] = os.pathsep.join(p for p in (value, env.get(key)) if p)
            else:
                env.setdefault(key, value)
        if self.cuda_visible != "keep":  # submitit's LocalExecutor sets it from gpus_per_node; undo that
            env.pop("CUDA_VISIBLE_DEVICES", None)
            if self.cuda_visible is not None:
                env["CUDA_VISIBLE_DEVICES"] = self.cuda_visible
        t0, timed_out = time.monotonic(), False
        # submitit's SIGUSR2 (before a time limit) would requeue or fail the job at once: a task runs to
        # its limit instead, and the cluster records TIMEOUT (the task inherits the ignored signal)
        if not self.requeue:
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        with open(self.log if rank == 0 else f"{self.log}.task{rank}", "a") as log:
            log.write(" ".join(self.cmd) + "\n")
            log.flush()
            proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                                    start_new_session=self.new_session)
            try:
                rc, timed_out = self._wait(proc, t0)
            except BaseException:  # interrupted (Ctrl-C, scancel's SIGTERM, a requeue): the task stops with us
                _terminate(proc, 60.0 if self.requeue else 10.0)  # a run saves its checkpoint on SIGTERM
                raise
        if rank != 0:
            if rc != 0:
                raise SystemExit(rc if 0 < rc < 256 else 1)
            return rc
        write_text_atomic(self.exit_file, json.dumps({"exit_code": rc, "timed_out": timed_out,
                                                      "wall_s": round(time.monotonic() - t0, 1)}))
        if rc != 0:  # the job fails with the task: SLURM's afterok and states see it
            raise SystemExit(rc if 0 < rc < 256 else 1)
        return rc

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on SIGUSR2 (preemption, time limit): the same command again, from its own checkpoint."""
        if not self.requeue:
            return None  # not requeued: the job ends, and the cluster says why
        import submitit

        cmd = self.cmd if "--resume" in self.cmd else [*self.cmd, "--resume", "auto"]
        return submitit.helpers.DelayedSubmission(replace(self, cmd=cmd))

    def _wait(self, proc: subprocess.Popen, t0: float) -> tuple[int, bool]:
        """(exit code, timed out); a local job also ends when the runner that started it is gone."""
        while True:
            try:
                return proc.wait(1.0), False
            except subprocess.TimeoutExpired:
                pass
            if self.timeout_s is not None and time.monotonic() - t0 > self.timeout_s:
                return _terminate(proc), True
            if self.runner_pid is not None and not _alive(self.runner_pid):
                _terminate(proc)
                raise SystemExit(f"the runner (pid {self.runner_pid}) is gone; task stopped")


def _export_distributed() -> int:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT of this SLURM task into the environment; the global rank."""
    import submitit

    env = submitit.helpers.TorchDistributedEnvironment()
    if env._job_env.num_nodes == 1:  # one node: rendezvous on the loopback interface
        env.master_addr = "127.0.0.1"
    env.export(set_cuda_visible_devices=False)
    return env.rank


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate(proc: subprocess.Popen, grace_s: float = 10.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _die_with_parent() -> None:
    """Child side of fork: SIGTERM when the job's process dies (even by SIGKILL), so no task is orphaned."""
    import ctypes

    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
