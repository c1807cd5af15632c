"""``--launcher`` and the ``--slurm-*`` options, defined once for every command that submits jobs
(run_all, study, demo: one job per task; pretraining: one job of many tasks; docs/CLUSTER.md)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from plumbing.argtypes import positive_minutes

if TYPE_CHECKING:
    from plumbing.jobs import SlurmOptions

__all__ = ["add_launcher_args", "launcher_argv", "slurm_options"]
_CLUSTER_KEYS = ("partition", "account", "qos", "constraint", "time")


def add_launcher_args(p: argparse.ArgumentParser, distributed: bool = False) -> None:
    """The options of a command that runs jobs. ``distributed``: one job of ``--nodes`` x ``--tasks-per-node``
    processes (pretraining; requeued on preemption, ``--wait`` to follow it); else one job per task,
    ``--no-wait`` to return after submitting and ``--slurm-cpu-only`` for a cluster without GPUs."""
    g = p.add_argument_group("launcher (docs/CLUSTER.md)")
    if distributed:
        g.add_argument("--launcher", choices=["local", "slurm"], default="local",
                       help="local: this process (or torchrun); slurm: one SLURM job, one task per GPU")
        g.add_argument("--nodes", type=int, default=1)
        g.add_argument("--gpus-per-node", type=int, default=0)
        g.add_argument("--tasks-per-node", type=int, default=None,
                       help="processes per node (default: --gpus-per-node, at least 1; CPU runs use gloo)")
        g.add_argument("--cpus-per-task", type=int, default=None, help="default 4 with GPUs, else 1")
    else:
        g.add_argument("--launcher", choices=["local", "slurm"], default="local",
                       help="local: subprocesses here (--jobs at a time); slurm: one SLURM job per task (submitit)")
        g.add_argument("--no-wait", action="store_true", help="slurm: return after submitting; the same command "
                       "again collects finished jobs and submits only what failed or never ran")
    for key in _CLUSTER_KEYS[:4]:
        g.add_argument(f"--slurm-{key}", default=None)
    g.add_argument("--slurm-time", type=positive_minutes, default=None, metavar="MIN",
                   help="time limit of the job in minutes (default 24 h)" if distributed else
                   "time limit of every job in minutes (default: the task's timeout_min, else 24 h)")
    if distributed:
        g.add_argument("--slurm-signal-delay", type=int, default=120, metavar="S",
                       help="SIGUSR2 this many seconds before the time limit: requeue and resume (default 120)")
        g.add_argument("--max-requeues", type=int, default=10, help="time-limit requeues before giving up (default 10)")
        g.add_argument("--wait", action="store_true", help="wait for the job to end; exit 0 only if it COMPLETED")
    else:
        g.add_argument("--slurm-cpu-only", action="store_true", default=None,
                       help="request no GPUs (a CPU-only cluster, e.g. scripts/slurm_local.sh)")


def launcher_argv(args: argparse.Namespace) -> list[str]:
    """The --launcher and --slurm-* options of ``args`` as command-line arguments (passed on to run_all)."""
    out = ["--launcher", args.launcher]
    for key in _CLUSTER_KEYS:
        if getattr(args, f"slurm_{key}") is not None:
            out += [f"--slurm-{key}", str(getattr(args, f"slurm_{key}"))]
    return out + (["--slurm-cpu-only"] if getattr(args, "slurm_cpu_only", None) else [])


def slurm_options(args: argparse.Namespace, defaults: dict | None = None) -> SlurmOptions:
    """The --slurm-* options over a suite's ``slurm:`` section (the options win)."""
    from plumbing.jobs import SlurmOptions  # the job runner is loaded by who submits, not by every parser

    d = dict(defaults or {})
    pick = {k: getattr(args, f"slurm_{k}", None) for k in (*_CLUSTER_KEYS, "cpu_only")}
    d.update({k: v for k, v in pick.items() if v is not None})
    return SlurmOptions(partition=d.get("partition"), account=d.get("account"), qos=d.get("qos"),
                        constraint=d.get("constraint"), time_min=d.get("time"), cpu_only=bool(d.get("cpu_only")),
                        cpus_per_gpu=d.get("cpus_per_gpu"), mem_per_gpu_gb=d.get("mem_per_gpu_gb"))
