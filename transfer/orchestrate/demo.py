"""``make demo``: the paper's story at small scale, from nothing to ``reports/demo/``.

    python -m transfer.orchestrate.demo [--data data/synthetic] [--runs runs/pretrain] [--out runs/transfer/demo]
                            [--report reports/demo] [--jobs 1] [--launcher local|slurm --slurm-... (docs/CLUSTER.md)]
    # a few-minute smoke run of the same pipeline (tiny data, 1 epoch, probes only):
    python -m transfer.orchestrate.demo --preset tiny --data /tmp/d/data --runs /tmp/d/runs --out /tmp/d/out \
        --report /tmp/d/report --set optim.epochs=1 --set optim.batch_size=32 --tasks knn linear fewshot --seeds 2

1. generate the synthetic data (``mast.data.synthetic``, demo preset; reused when complete);
2. pretrain VICReg and MAST with the same demo config, ``--seeds`` pretraining seeds each (default
   3), in deterministic mode (``python -m mast.pretrain --name demo_mast_s1 method=mast seed=1
   runtime.deterministic=true``); a finished run (its ``mast_state.pth`` exists) is kept, an
   interrupted one resumes from ``last.pth``;
3. run the demo suite's frozen-feature probes on every seed (``--name vicreg`` / ``--name mast``
   group the seeds: one row each) and on the randomly initialised network
   ``demo_mast_s0/backbone_init.pth`` (the floor), and its fine-tuning tasks (detection,
   segmentation, the ImageNet twin: docs/DEMO.md) on seed 0 of each method;
4. build the report with VICReg as the baseline.

Every step prints what it runs and how long it took; re-running the command resumes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from mast import rundir
from plumbing.jobs import JobSpec, LaunchError, Runner
from plumbing.launcher_args import add_launcher_args, launcher_argv, slurm_options
from plumbing import PROJECT

METHODS = ("vicreg", "mast")
FINE_TUNING = ("detection", "segmentation", "classification")  # minutes per run: on seed 0 only (README "The demo report")
PROBES = ("knn", "linear", "fewshot")


def _step(title: str) -> float:
    print(f"\n=== {time.strftime('%H:%M:%S')} {title}", flush=True)
    return time.monotonic()


def is_finished(run_dir: Path) -> bool:
    """A pretraining run that wrote its final exports (kept by demo and study)."""
    return (run_dir / rundir.MAST_STATE).is_file() and (run_dir / rundir.BACKBONE).is_file()


def pretrain_command(name: str, runs: Path, data: Path, preset: str, overrides: list[str]) -> list[str]:
    """``python -m mast.pretrain`` for run ``runs/name`` on the synthetic data (resumes a started run)."""
    cmd = [sys.executable, "-m", "mast.pretrain", "--config", "demo", "--name", name,
           f"out_dir={runs}", f"data.root={data}/unlabeled", f"data.synthetic={preset}", f"data.synthetic_dir={data}",
           f"knn.root={data}/classification/shape", *overrides]
    if (runs / name / rundir.LAST).is_file():
        cmd += ["--resume", "auto"]
    return cmd


def pretrain_all(args: argparse.Namespace) -> dict[tuple[str, int], Path]:
    """Pretrain every ``demo_<method>_s<seed>`` (deterministic) not finished yet, through the job runner
    (locally one after another, on SLURM all at once); returns the run folders."""
    runs, specs = {}, []
    for method in METHODS:
        for seed in range(args.seeds):
            run_dir = runs[(method, seed)] = args.runs / f"demo_{method}_s{seed}"
            if is_finished(run_dir):
                print(f"{run_dir}: finished earlier, kept (delete the folder to retrain)", flush=True)
                continue
            cmd = pretrain_command(run_dir.name, args.runs, args.data, args.preset,
                                   [f"method={method}", f"seed={seed}", "runtime.deterministic=true", *args.set])
            specs.append(JobSpec(run_dir.name, f"pretrain {method} seed {seed}", cmd,
                                 args.runs / "logs" / f"{run_dir.name}.log", {"PYTHONPATH": str(PROJECT)},
                                 slurm_options(args).resources(1, None)))
    if specs:
        failed = []
        runner = Runner(args.runs, args.launcher, 1, slurm_options(args))
        runner.run(specs, lambda spec, o: "ok" if o.ok else failed.append(spec) or
                   f"failed ({o.describe(None)}; log {spec.log})")
        if failed:
            raise SystemExit(f"demo: pretraining failed: {', '.join(s.label for s in failed)} (see {failed[0].log})")
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m transfer.orchestrate.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/synthetic"))
    p.add_argument("--runs", type=Path, default=Path("runs/pretrain"))
    p.add_argument("--out", type=Path, default=Path("runs/transfer/demo"))
    p.add_argument("--report", type=Path, default=Path("reports/demo"))
    p.add_argument("--jobs", type=int, default=1, help="suite tasks run at the same time")
    p.add_argument("--preset", choices=["demo", "tiny"], default="demo", help="synthetic data preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="pretraining config override")
    p.add_argument("--tasks", nargs="+", default=None, help="only these task types of the suite")
    p.add_argument("--seeds", type=int, default=3, help="pretraining seeds per method (default 3)")
    add_launcher_args(p)
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.no_wait:
        p.error("--no-wait: the demo's probes need its pretrained checkpoints; run it without --no-wait")
    t_all = time.monotonic()

    t = _step(f"1/4 synthetic data -> {args.data}")
    from mast.data.synthetic import SyntheticSpec, ensure_dataset

    ensure_dataset(args.data, getattr(SyntheticSpec, args.preset)())
    print(f"data ready in {time.monotonic() - t:.0f}s", flush=True)

    t = _step(f"2/4 pretrain {' and '.join(METHODS)}, {args.seeds} seed(s) each (demo config, deterministic)")
    try:
        runs = pretrain_all(args)  # (method, seed) -> run folder
    except LaunchError as e:
        raise SystemExit(f"demo: {e}") from None
    print(f"pretraining ready in {time.monotonic() - t:.0f}s", flush=True)

    t = _step("3/4 probes on every seed and the random-init floor; fine-tuning on seed 0 of each method")
    suite = [sys.executable, "-m", "transfer.run_all", "--suite", "demo", "--var", f"data={args.data}",
             "--out", str(args.out), "--report", str(args.report), "--baseline", "vicreg", "--jobs", str(args.jobs),
             *launcher_argv(args)]
    probes = [k for k in PROBES if args.tasks is None or k in args.tasks]
    fine = [k for k in FINE_TUNING if args.tasks is None or k in args.tasks]
    ckpts = [a for (m, _), d in runs.items() for a in ("--ckpt", str(d / rundir.BACKBONE), "--name", m)]
    floor = ["--ckpt", str(runs[("mast", 0)] / rundir.BACKBONE_INIT), "--name", "random_init"]
    codes = [subprocess.call([*suite, *ckpts, *floor, "--tasks", *probes, *(["--no-report"] if fine else [])])] \
        if probes else []
    if fine:
        _step("4/4 fine-tuning on seed 0 of each method, then the report")
        seed0 = [a for m in METHODS for a in ("--ckpt", str(runs[(m, 0)] / rundir.BACKBONE), "--name", m)]
        codes.append(subprocess.call([*suite, *seed0, "--tasks", *fine]))
    code = max(codes, default=0)
    minutes = (time.monotonic() - t_all) / 60
    print(f"\ndemo finished in {minutes:.1f} min (suite exit {code}); report: {args.report / 'index.md'}", flush=True)
    return 0 if code in (0, 1) else code  # 1 = some task failed: recorded in the report


if __name__ == "__main__":
    sys.exit(main())
