"""``python -m mast.pretrain --launcher slurm``: the run as one job of the one job runner (plumbing/jobs.py).

    python -m mast.pretrain --launcher slurm --nodes 2 --gpus-per-node 8 [--slurm-partition P]
        [--slurm-account A] [--slurm-qos Q] [--slurm-constraint C] [--slurm-time MIN] [--wait] \\
        --config imagenet_r50 --name r50_mast

One SLURM task per GPU (``--tasks-per-node`` for CPU runs: gloo), ``torch.distributed`` set up from the
SLURM environment in each task (the trainer reads RANK / WORLD_SIZE / LOCAL_RANK as under torchrun).
When the job is preempted or nears its time limit, SLURM sends SIGUSR2 (``--slurm-signal-delay``
seconds before); the job requeues itself with ``--resume auto`` and continues from its last
``last.pth`` (at most ``--max-requeues`` times). The job folder ``OUT_DIR/NAME/slurm`` (mode 0700)
holds submitit's files, the job's log and ``jobs.json``: the same command again while the job is
queued or running follows it instead of submitting a second copy; after it ended, collects its outcome,
and submits it again (continuing from ``last.pth``) if it did not finish.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mast import rundir
from plumbing.jobs import JobSpec, LaunchError, Resources, Runner
from plumbing.launcher_args import slurm_options

#: The options that ask for no GPUs, named when sbatch refuses a GPU request.
CPU_HINT = "--gpus-per-node 0 (CPU tasks, gloo; --tasks-per-node N for several) to request no GPUs"


def submit_pretraining(args: argparse.Namespace, argv: list[str], run_dir: Path) -> int:
    """Submit the run (already validated); print the job id; with ``--wait`` follow it through its
    requeues to its end (0 only when it finished with exit code 0)."""
    tasks = args.tasks_per_node or max(args.gpus_per_node, 1)
    folder = run_dir / "slurm"
    spec = JobSpec("pretrain", f"pretrain {run_dir.name}", [sys.executable, "-m", "mast.pretrain", *argv],
                   folder / "pretrain.log", {"PYTHONUNBUFFERED": "1"},
                   Resources(gpus=args.gpus_per_node, cpus=args.cpus_per_task or (4 if args.gpus_per_node else 1),
                             timeout_min=args.slurm_time, nodes=args.nodes, tasks_per_node=tasks),
                   distributed=True, requeues=args.max_requeues, signal_delay_s=args.slurm_signal_delay)
    outcome = []

    def prepare() -> None:  # submitted again after an earlier job of this run ended unfinished: continue it
        if outcome and "--resume" not in spec.cmd and (run_dir / rundir.LAST).is_file():
            spec.cmd += ["--resume", "auto"]

    spec.prepare = prepare
    try:
        runner = Runner(folder, "slurm", slurm=slurm_options(args), wait=args.wait, folder=folder, cpu_hint=CPU_HINT)
        print(f"{args.nodes} node(s) x {tasks} task(s) -> {run_dir} (log {spec.log}, submitit's files "
              f"{folder}/<job>/)", flush=True)
        runner.run([spec], lambda s, o: outcome.append(o) or ("COMPLETED" if o.ok else f"failed: {o.describe(None)}"))
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0 if runner.running or not outcome or outcome[-1].ok else 1
