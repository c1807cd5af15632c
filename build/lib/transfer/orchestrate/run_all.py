"""Run an evaluation suite on one or more checkpoints, then build the paper-style report.

    python transfer/run_all.py --ckpt runs/pretrain/demo_mast/backbone.pth --ckpt vicreg.pth \\
        [--name mast --name vicreg] [--backbone NAME ...] [--suite demo|paper|my.yaml] [--tasks knn linear] \\
        [--out runs/transfer] [--force] [--jobs N] [--report reports/NAME] [--baseline vicreg] \\
        [--launcher local|slurm] [--no-wait] [--slurm-partition P --slurm-account A --slurm-time MIN ...]

A thin orchestrator over the task CLIs (``python -m <TASK_MODULES[task]> --ckpt C --out D --scale S``):
every task runs in its own process, writes ``D/record.json``, and run_all appends that record
(with the checkpoint name and task-config hash) to ``OUT/results.jsonl``. A crash, NaN or missing
dataset is one failed/skipped record and the suite goes on; a re-run skips every task that already
has an ``ok`` record for the same checkpoint sha256 and task config, so an interrupted suite
resumes where it stopped. ``D = OUT/<checkpoint name>/<task name>``. Tasks run through the job
runner (``plumbing/jobs.py``): local subprocesses, ``--jobs`` at a time, or one SLURM
job each with ``--launcher slurm`` (docs/CLUSTER.md: resources per task type, --no-wait and collect).

Pretraining seeds: several checkpoints may share a ``--name`` (``--ckpt s0.pth --ckpt s1.pth --name
mast --name mast``); they form one group, one row of the report (mean over seeds, hierarchical
interval), and each keeps its own results: ``D = OUT/<name>/<sha256[:8]>/<task name>``. How seeds
are numbered (``seed_index``, ``pretrain_seed``) and paired: ``transfer/orchestrate/resolve.py``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from plumbing import PROJECT
from plumbing.atomic import DiskFullError
from plumbing.jobs import JobSpec, LaunchError, Outcome, Runner
from plumbing.launcher_args import add_launcher_args, slurm_options
from plumbing.lock import FolderBusyError, FolderLock
from plumbing.signals import exit_code, stop_signals
from transfer.orchestrate import console
from transfer.orchestrate.resolve import UNTRAINED_STEM, Checkpoint, UsageError, resolve_checkpoints
from transfer.orchestrate.suite import Suite, SuiteError, load_suite, parse_task_args, parse_vars
from transfer.orchestrate.suite_jobs import (TENSORBOARD_TASKS, Job, finish, job_command, plan, precheck, prepare,
                                              task_env, task_resources)



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_all", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", action="append", default=[],
                   help=f"checkpoint file or hub reference (hf://ORG/REPO[@REV][/FILE], torchvision://MODEL.TAG, timm://MODEL.TAG, https://URL[#sha256=HEX]; repeat for several); a file named {UNTRAINED_STEM}.pth is the random-init "
                        "floor: suite tasks marked 'checkpoints: trained' (fine-tuning) skip it")
    p.add_argument("--name", action="append", default=[], help="display name per --ckpt, in order "
                   "(default: the pretraining run's directory name, else the file stem); checkpoints sharing "
                   "a name are pretraining seeds of one method: one row of the report")
    p.add_argument("--backbone", action="append", default=[], metavar="NAME",
                   help="backbone to use in a checkpoint holding several (see python -m transfer.inspect_checkpoint): once for "
                        "every --ckpt, or once per --ckpt in order ('auto' keeps that file's default choice)")
    p.add_argument("--suite", default="demo", help="demo | paper | path to a suite YAML (default demo)")
    p.add_argument("--tasks", nargs="+", default=None, help="only these task types or task names (e.g. knn, or knn_imagenet svm_voc07)")
    p.add_argument("--var", action="append", default=[], help="override a suite variable: NAME=VALUE "
                   "(paper: --var datasets=/data finds every dataset under one root)")
    p.add_argument("--task-args", action="append", default=[], metavar="TASK=ARGS",
                   help="arguments appended to a task type's or task name's command, e.g. "
                        "'detection=SOLVER.MAX_ITER 100', 'segmentation=--cfg-options train_cfg.max_iters=100', "
                        "'fewshot_fc100=--episodes 100'; such records are labelled <scale>+overrides")
    p.add_argument("--smoke", action="store_true", help="shorten every task to a pipeline check "
                   "(few iterations, small images, few episodes); records are labelled scale: smoke")
    p.add_argument("--check", action="store_true", help="only check that every task's dataset is on disk")
    p.add_argument("--out", type=Path, default=Path("runs/transfer"), help="results root (default runs/transfer)")
    p.add_argument("--force", action="store_true", help="re-run tasks that already have an ok record")
    p.add_argument("--jobs", type=int, default=1, help="tasks run at the same time (default 1)")
    p.add_argument("--report", type=Path, default=None, help="report folder (default OUT/report)")
    p.add_argument("--baseline", default=None, help="checkpoint name the tables compare against")
    p.add_argument("--no-report", action="store_true", help="do not build the report at the end")
    p.add_argument("--no-tensorboard", action="store_true", help="passed on to the tasks that write TensorBoard "
                   f"events ({', '.join(TENSORBOARD_TASKS)}): no event files")
    add_launcher_args(p)
    return p


def execute(todo: list[Job], results: Path, runner: Runner, command: str | None = None, force: bool = False) -> list[dict]:
    """Run (or submit) the tasks through the job runner, appending each finished record; Ctrl-C stops cleanly."""
    from transfer.records import append_jsonl

    finished = []
    by_key = {job.key: job for job in todo}

    def on_done(spec: JobSpec, outcome: Outcome) -> str:
        job = by_key[spec.key]
        job.record = finish(job, outcome, results.parent, command)
        append_jsonl(results, job.record)
        finished.append(job.record)
        return console.done_line(job.record, outcome.wall_s)

    specs = [JobSpec(job.key, job.label, job_command(job), job.out_dir / "run_all.log", task_env(job.spec),
                     task_resources(job.spec, runner.slurm)) for job in todo]
    for job, spec in zip(todo, specs):
        spec.prepare = lambda job=job, spec=spec: prepare(job, spec, force)
    try:
        runner.run(specs, on_done)
    except KeyboardInterrupt:
        stopped = [by_key[k] for k in runner.running]
        print(console.interrupted_line(len(finished), len(todo), (f"{j.ckpt.label}/{j.spec.name}" for j in stopped)),
              file=sys.stderr, flush=True)
        raise
    return finished




def main(argv: list[str] | None = None) -> int:
    """CLI entry point. SIGTERM (e.g. from a job scheduler) stops as cleanly as Ctrl-C; exit 143 for
    SIGTERM, 130 for Ctrl-C (SIGINT), the codes a shell gives a process killed by that signal."""
    try:
        with stop_signals():
            return _main(argv)
    except KeyboardInterrupt as e:  # before or between tasks: nothing is half-written
        print("run_all: interrupted; re-run the same command to resume.", file=sys.stderr)
        return exit_code(e)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.jobs < 1:
            raise UsageError(f"--jobs {args.jobs}: expected a positive integer")
        if args.no_wait and args.launcher != "slurm":
            raise UsageError("--no-wait needs --launcher slurm (local tasks are this process's children)")
        suite = load_suite(args.suite, parse_vars(args.var), args.tasks, parse_task_args(args.task_args), args.smoke)
        if args.check:
            from transfer.orchestrate.dataset_check import check_suite

            return check_suite(suite)
        if not args.ckpt:
            raise UsageError("--ckpt is required (a checkpoint .pth; repeat for several), unless --check")
        ckpts = resolve_checkpoints(args.ckpt, args.name, args.backbone)
        if args.baseline is not None and args.baseline not in {c.name for c in ckpts}:
            raise UsageError(f"--baseline {args.baseline}: not one of the checkpoint names {[c.name for c in ckpts]}")
    except (UsageError, SuiteError) as e:
        print(f"run_all: error: {e}", file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"run_all: error: --out {args.out}: exists and is not a folder (expected the results folder)",
              file=sys.stderr)
        return 2
    try:  # one run_all per results folder: a second one would interleave records
        lock = FolderLock(args.out, "run_all")
    except FolderBusyError as e:
        print(f"run_all: error: {e}", file=sys.stderr)
        return 2
    with lock:
        try:
            return _run(args, suite, ckpts, argv)
        except (DiskFullError, LaunchError) as e:  # results.jsonl keeps every complete record; re-run to resume
            print(f"run_all: error: {e}", file=sys.stderr)
            return 2


def _run(args: argparse.Namespace, suite: Suite, ckpts: list[Checkpoint], argv: list[str] | None) -> int:
    results = args.out / "results.jsonl"
    command = f"{invoked_as()} " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    todo, done = plan(ckpts, suite, args.out, args.force)
    for job in todo:
        job.tensorboard = not args.no_tensorboard
    blocked = next((p for job in todo for p in (job.out_dir, *job.out_dir.parents)
                    if p.is_relative_to(args.out) and p.exists() and not p.is_dir()), None)
    if blocked is not None:  # e.g. OUT/<name> is a file: no task could write its folder
        print(f"run_all: error: {blocked}: exists and is not a folder (run_all puts a task's results in "
              f"OUT/<checkpoint>/<task>/); move it or choose another --out", file=sys.stderr)
        return 2
    print(console.plan_line(suite.name, suite.path, len(suite.tasks), len(ckpts), len(done), len(todo), results),
          flush=True)
    t0 = time.monotonic()
    runner = Runner(args.out, args.launcher, args.jobs, slurm_options(args, suite.slurm), wait=not args.no_wait,
                    force=args.force)
    todo, unrunnable = precheck(todo, results, command)
    finished = unrunnable + execute(todo, results, runner, command, args.force)
    if finished:
        print(f"\n{len(finished)} task(s) in {console.elapsed(time.monotonic() - t0)}:\n" + console.summary(finished),
              flush=True)
    if runner.running:  # --no-wait: the report waits for the jobs; the same command collects them
        return 1 if any(r["status"] == "failed" for r in finished) else 0
    reported = args.no_report or _report(results, args.report or args.out / "report", args.baseline, argv)
    line, nothing_ran = console.outcome(finished)
    if line:
        print(line, flush=True)
    return 1 if nothing_ran or not reported or any(r["status"] == "failed" for r in finished) else 0


def invoked_as() -> str:
    """How this command was typed, for the records: the installed console script, else the checkout's path."""
    return "mast-transfer" if Path(sys.argv[0]).name == "mast-transfer" else "python transfer/run_all.py"


def _report(results: Path, out: Path, baseline: str | None, argv: list[str] | None) -> bool:
    """Build the report in its own process (``python -m reports.build``), like every task; False if it failed
    (run_all then exits 1: the results are on disk, the report is not)."""
    command = f"{invoked_as()} " + " ".join(argv if argv is not None else sys.argv[1:])
    rebuild = ["-m", "reports.build", "--results", str(results), "--out", str(out)]
    rebuild += ["--baseline", baseline] if baseline else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(PROJECT), os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, *rebuild, "--command", command], capture_output=True, text=True, env=env)
    if done.returncode == 0:
        print(f"report: {done.stdout.strip()}", flush=True)
        return True
    reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]  # the results are safe on disk
    print(f"run_all: report not built ({reason}); rebuild with python {' '.join(rebuild)}", file=sys.stderr)
    return False


if __name__ == "__main__":
    sys.exit(main())
