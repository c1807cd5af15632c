"""``make study``: MAST v2 against VICReg and the controls that isolate its parts, over pretraining seeds (issues 14, 35).

    python -m transfer.orchestrate.study [--seeds 0 1 2 3 4] [--epochs 6] [--jobs 2] [--data data/synthetic]
                             [--runs runs/study/pretrain] [--out runs/study/transfer]
                             [--report reports/study] [--set KEY=VALUE ...] [--plan]

Arms (same demo config otherwise: ResNet-18, 32 px views, batch 128, expander 1024³, LARS):

- ``vicreg``          VICReg, λ = 25;
- ``mast``            MAST (eq. 4 v2, w = 1/q);
- ``mast_tied``       MAST with ``model.masks=tied``: one relief weight per augmentation, the same
                      uncertainty head (removes only the per-dimension choice of the masks);
- ``mast_unc_none``   MAST with ``model.uncertainty=none`` (one learned scalar per augmentation);
- ``vicreg_matched``, ``vicreg_matched_tied``, ``vicreg_matched_unc_none``: each MAST-type arm's own
                      matched-λ VICReg, λ = 25 × w_eff of the same-seed run of that arm
                      (``loss.inv_coeff=auto:RUN``, mast/matched.py's rule: w_eff = Σwr²/Σr² over the
                      last max(50, one epoch) logged steps): separates the arm's reweighting from a merely
                      weaker invariance term.

Each arm is pretrained once per seed (``python -m mast.pretrain``, one thread each, ``--jobs`` at
a time); every finished checkpoint gets the frozen-feature probes of ``transfer/suites/study.yaml``
(``python transfer/run_all.py``, kNN + linear on color/side/shape, 5-way few-shot); then
``python -m reports.study_report`` writes the report (per-seed tables, per-arm means and MAST minus
each control with the intervals of docs/STATISTICS.md). Re-running resumes: finished runs and probe
records are kept, an interrupted pretraining continues from its last.pth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mast import rundir
from transfer.orchestrate.demo import _step, is_finished, pretrain_command
from plumbing.jobs import JobSpec, LaunchError, Outcome, Runner
from plumbing.launcher_args import add_launcher_args, slurm_options
from plumbing.signals import exit_code, stop_signals
from plumbing import PROJECT

ARMS: dict[str, list[str]] = {
    "vicreg": ["method=vicreg"],
    "vicreg_matched": ["method=vicreg", "loss.inv_coeff=auto:{source_run}"],
    "mast_unc_none": ["method=mast", "model.uncertainty=none"],
    "mast": ["method=mast"],
    "mast_tied": ["method=mast", "model.masks=tied"],
    "vicreg_matched_tied": ["method=vicreg", "loss.inv_coeff=auto:{source_run}"],
    "vicreg_matched_unc_none": ["method=vicreg", "loss.inv_coeff=auto:{source_run}"],
}
#: matched control -> the MAST-type arm whose same-seed run gives its λ (its own run, never another arm's)
MATCHED_SOURCE = {"vicreg_matched": "mast", "vicreg_matched_tied": "mast_tied", "vicreg_matched_unc_none": "mast_unc_none"}
#: the order in which arms are planned (a study cut short still answers the headline question on every seed)
PRIORITY = ("mast", "vicreg", "vicreg_matched", "mast_tied", "vicreg_matched_tied", "mast_unc_none",
            "vicreg_matched_unc_none")
#: Study settings on top of the demo config (documented in the README): a kNN monitor only at
#: initialisation and at the end, no progress bars in the logs.
STUDY_OVERRIDES = ["knn.every=0", "runtime.progress=false", "runtime.threads=1"]
#: Measured on the 2-core CPU machine (one thread, ResNet-18, 32 px views, batch 128, expander
#: 1024³, two jobs at a time): seconds per pretraining step, and seconds for the study suite on one
#: checkpoint (7 probes, process start-up included); the medians of the 7-arm study of 2026-12-06
#: (227 / 234 s per VICReg / MAST run of 234 steps, 55 s of probes). Used only for the up-front estimate.
STEP_S = {"vicreg": 0.84, "mast": 0.87}
PROBES_S = 55.0
RUN_OVERHEAD_S = 30.0  # per pretraining run: start-up, kNN at initialisation and at the end, held-out pass
SUITE = Path(__file__).resolve().parents[1] / "suites" / "study.yaml"


#: Every job's environment defaults: one thread, unbuffered logs, the project importable.
JOB_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(PROJECT)}


def study_job(name: str, cmd: list[str], log: Path, deps: list[str] | None = None, estimate_s: float = 0.0) -> JobSpec:
    """One job of the study (a pretraining run or the probes of one checkpoint) for the job runner. Its
    state: pending | ok (kept) | stale (a matched run of an older rule) | running | failed | skipped."""
    return JobSpec(name, name, cmd, log, dict(JOB_ENV), deps=list(deps or []), estimate_s=estimate_s, new_session=True)


def run_name(arm: str, seed: int) -> str:
    """Checkpoint name in the results (``mast_s0``); the pretraining run is ``study_<name>``."""
    return f"{arm}_s{seed}"


def count_steps(data: Path, overrides: list[str], preset: str = "demo") -> int:
    """Optimisation steps of one pretraining run (images // batch × epochs), for the estimate; data
    not generated yet counts the images its preset will have (``--plan`` writes nothing)."""
    from mast.config import load_config
    from mast.data.synthetic import SyntheticSpec

    cfg = load_config("demo", overrides)
    root = data / "unlabeled"
    images = sum(1 for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")) if root.is_dir() \
        else getattr(SyntheticSpec, preset)().unlabeled
    return max(images // cfg.optim.batch_size, 1) * cfg.optim.epochs


def check_args(args: argparse.Namespace, overrides: list[str]) -> str | None:
    """The one-line reason the options cannot make a study, or None (checked before anything is written)."""
    from mast.config import ConfigError, load_config
    from transfer.orchestrate.suite import SuiteError, load_suite

    bad = [s for s in args.seeds if not 0 <= s < 2**32]
    if bad:
        return f"--seeds {bad[0]}: a pretraining seed is an integer in 0 .. 2**32-1"
    if len(set(args.seeds)) != len(args.seeds):
        return f"--seeds {' '.join(map(str, args.seeds))}: each seed once (a repeated seed would be planned twice)"
    if args.epochs < 1:
        return f"--epochs {args.epochs}: expected at least 1"
    for name, path in (("--runs", args.runs), ("--out", args.out), ("--report", args.report), ("--data", args.data)):
        blocked = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            return f"{name} {path}: {blocked} exists and is not a folder"
    try:
        load_config("demo", overrides)
        suite_tasks = {t.task for t in load_suite(str(args.suite)).tasks}
    except (ConfigError, SuiteError) as e:
        return f"{' '.join(str(e).split())}"
    unknown = [t for t in args.tasks or [] if t not in suite_tasks]
    if unknown:
        return f"--tasks {unknown[0]}: not a task type of the study suite {args.suite} ({sorted(suite_tasks)})"
    return None


def probes_done(out: Path, name: str, suite: Path, backbone: Path) -> bool:
    """Every suite task has an ok record for ``name``, written after ``backbone`` (so not of an older run)."""
    from transfer.orchestrate.suite import load_suite

    if not backbone.is_file():
        return False
    for task in load_suite(str(suite)).tasks:
        path = out / name / task.name / "record.json"
        try:
            ok = json.loads(path.read_text()).get("status") == "ok"
        except (OSError, ValueError, AttributeError):
            return False
        if not ok or path.stat().st_mtime < backbone.stat().st_mtime:
            return False
    return True


def stale_match(run_dir: Path, arm: str = "vicreg_matched") -> bool:
    """A finished run of an older rule: a matched control whose λ was resolved on the mean w over the last epoch
    (issue 14), or a MAST-type run that logs no w_eff (so its matched control cannot be resolved; issue 35)."""
    from mast.matched import MatchedError, window_means

    try:
        if arm in MATCHED_SOURCE:
            config = yaml.safe_load((run_dir / rundir.CONFIG).read_text())
            return "w_eff" not in ((config.get("loss") or {}).get("inv_coeff_source") or "")
        win = window_means(run_dir / rundir.METRICS)
        return win is not None and win.w_eff is None
    except (OSError, yaml.YAMLError, AttributeError, MatchedError):
        return False


def stale_runs(args: argparse.Namespace) -> list[Path]:
    """Finished runs the study cannot keep: stale matched controls and the sources of a matched arm to run."""
    sources = {MATCHED_SOURCE[a] for a in args.arms if a in MATCHED_SOURCE}
    return [d for seed in args.seeds for a in args.arms if a in MATCHED_SOURCE or a in sources
            if is_finished(d := args.runs / f"study_{run_name(a, seed)}") and stale_match(d, a)]


def plan_jobs(args: argparse.Namespace, overrides: list[str]) -> list[JobSpec]:
    """Pretraining jobs (a matched run waits for its own arm's same-seed run) and one probe job per checkpoint.

    List order is priority: the headline comparison (MAST, VICReg, matched VICReg; per seed, MAST first
    because its matched run waits for it) is pretrained and probed before the controls of issue 35 and
    the ablation, so that a study cut short still answers the main question on every seed.
    """
    steps = count_steps(args.data, overrides, args.preset)
    stale = set(stale_runs(args))
    logs = args.runs / "logs"
    main_arms = [a for a in ("mast", "vicreg", "vicreg_matched") if a in args.arms]
    order = [(seed, arm) for seed in args.seeds for arm in main_arms]
    order += [(seed, arm) for seed in args.seeds for arm in PRIORITY if arm in args.arms and arm not in main_arms]
    pretrain, probes = [], []
    for seed, arm in order:
        name = run_name(arm, seed)
        run_dir = args.runs / f"study_{name}"
        source = MATCHED_SOURCE.get(arm)
        source_run = args.runs / f"study_{run_name(source, seed)}" if source else None
        arm_overrides = [o.format(source_run=source_run) for o in ARMS[arm]]
        cmd = pretrain_command(f"study_{name}", args.runs, args.data, args.preset,
                               [*arm_overrides, f"seed={seed}", *overrides])
        deps = [f"pretrain:{run_name(source, seed)}"] if source else []
        job = study_job(f"pretrain:{name}", cmd, logs / f"pretrain_{name}.log", deps,
                  RUN_OVERHEAD_S + steps * STEP_S["vicreg" if arm.startswith("vicreg") else "mast"])
        if is_finished(run_dir):
            job.state = "stale" if run_dir in stale else "ok"
        pretrain.append(job)
        probe_cmd = [sys.executable, "-m", "transfer.run_all",
                     "--ckpt", str(run_dir / rundir.BACKBONE), "--name", name, "--suite", str(args.suite), "--var", f"data={args.data}",
                     "--out", str(args.out / name), "--no-report", "--jobs", "1"]  # one run_all per folder
        probe_cmd += ["--tasks", *args.tasks] if args.tasks else []
        probe = study_job(f"probes:{name}", probe_cmd, logs / f"probes_{name}.log", [job.key], PROBES_S)
        if job.state == "ok" and probes_done(args.out / name, name, args.suite, run_dir / rundir.BACKBONE):
            probe.state, probe.estimate_s = "ok", 0.0  # kept; run_all would skip every task anyway
        probes.append(probe)
    n_main = len(main_arms) * len(args.seeds)
    return pretrain[:n_main] + probes[:n_main] + pretrain[n_main:] + probes[n_main:]


def _fmt(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def execute(jobs: list[JobSpec], runner: Runner) -> None:
    """Run the pending jobs through the job runner, each after its dependencies succeeded (SLURM: afterok).

    Jobs run in their own sessions (like separately typed commands: with the kernel's autogroup
    scheduling every session gets an equal CPU share). run_all's exit 1 (a task failed) is a record
    in the results, not a study failure.
    """
    for job in jobs:
        job.resources = runner.slurm.resources(1, None)

    def on_done(job: JobSpec, outcome: Outcome) -> str:
        if job.key.startswith("probes:") and outcome.exit_code == 1 and not outcome.cluster_state:
            job.state = "ok"
        left = sum(j.estimate_s for j in jobs if j.state == "pending") / runner.parallel
        why = "" if job.state == "ok" else f" ({outcome.describe(None)}; see {job.log})"
        return f"{job.state} in {_fmt(outcome.wall_s or 0)}{why}; queued work ~{_fmt(left)}"

    runner.run(jobs, on_done)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m transfer.orchestrate.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="pretraining seeds (default 0 1 2 3 4: 35 runs, ~1.5 h on 2 cores)")
    p.add_argument("--arms", nargs="+", default=list(PRIORITY), choices=list(ARMS), help="default: all seven")
    p.add_argument("--epochs", type=int, default=6, help="pretraining epochs (default 6 = 234 steps on the demo data)")
    p.add_argument("--jobs", type=int, default=2, help="subprocesses at the same time, one thread each (default 2)")
    p.add_argument("--data", type=Path, default=Path("data/synthetic"))
    p.add_argument("--preset", choices=["demo", "tiny"], default="demo", help="synthetic data preset")
    p.add_argument("--runs", type=Path, default=Path("runs/study/pretrain"))
    p.add_argument("--out", type=Path, default=Path("runs/study/transfer"), help="probe results root")
    p.add_argument("--report", type=Path, default=Path("reports/study"))
    p.add_argument("--suite", type=Path, default=SUITE, help="probe suite (default transfer/suites/study.yaml)")
    p.add_argument("--tasks", nargs="+", default=None, help="only these probe types (knn linear fewshot)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="pretraining override for every arm (e.g. runtime.device=cuda)")
    p.add_argument("--plan", action="store_true", help="print the jobs and the expected duration, run nothing")
    add_launcher_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """``make study``. Jobs run in their own sessions: on `kill` or Ctrl-C the runner stops them itself;
    the signal handlers are this command's while it runs and restored on return."""
    with stop_signals():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    orphan = next((a for a in args.arms if MATCHED_SOURCE.get(a, a) not in args.arms), None)
    if orphan:
        raise SystemExit(f"study: --arms {orphan} needs the {MATCHED_SOURCE[orphan]} arm (its λ comes from that "
                         "arm's same-seed run)")
    if args.jobs < 1 or not args.seeds:
        raise SystemExit("study: --jobs must be >= 1 and --seeds non-empty")
    overrides = [*STUDY_OVERRIDES, f"optim.epochs={args.epochs}", *args.set]
    problem = check_args(args, overrides)
    if problem:
        print(f"study: error: {problem}", file=sys.stderr)
        return 2
    stale = stale_runs(args)
    if stale and not args.plan:
        print(f"study: error: {stale[0]} (and {len(stale) - 1} more) was made by an older rule (a matched λ on the mean "
              "w, or no logged w_eff); move it away to rerun it with mast/matched.py's w_eff rule", file=sys.stderr)
        return 2
    t_all = time.monotonic()
    if not args.plan:  # --plan writes nothing: it estimates from the preset when the data is not there yet
        t_all = _step(f"1/3 synthetic data -> {args.data}")
        from mast.data.synthetic import SyntheticSpec, ensure_dataset

        ensure_dataset(args.data, getattr(SyntheticSpec, args.preset)())
    jobs = plan_jobs(args, overrides)
    todo = [j for j in jobs if j.state == "pending"]
    serial = sum(j.estimate_s for j in todo)
    print(f"{len(args.arms)} arms x {len(args.seeds)} seeds, {args.epochs} epochs "
          f"({count_steps(args.data, overrides, args.preset)} "
          f"steps) each; {sum(j.key.startswith('pretrain:') for j in todo)} pretraining runs and "
          f"{sum(j.key.startswith('probes:') for j in todo)} probe suites to run.\n"
          f"Expected duration: ~{serial / args.jobs / 60:.0f} min with --jobs {args.jobs} "
          f"({serial / 60:.0f} min of one-thread work, measured rates of a 2-core CPU: "
          f"{STEP_S['vicreg']} / {STEP_S['mast']} s per VICReg / MAST step, {PROBES_S:.0f} s of probes per "
          f"checkpoint; slower when other jobs share the cores).", flush=True)
    if args.plan:
        for job in jobs:
            print(f"  {job.state:8s} {job.key:28s} ~{_fmt(job.estimate_s)}  after {job.deps or '-'}")
        return 0
    where = f"{args.jobs} at a time" if args.launcher == "local" else "SLURM jobs"
    _step(f"2/3 pretraining and probes ({len(todo)} jobs, {where})")
    try:
        runner = Runner(args.runs, args.launcher, args.jobs, slurm_options(args), wait=not args.no_wait)
        execute(jobs, runner)
    except LaunchError as e:
        raise SystemExit(f"study: {e}") from None
    except KeyboardInterrupt as e:
        print("study: interrupted; re-run the same command to resume", file=sys.stderr)
        return exit_code(e)
    if runner.running:  # --no-wait: the same command later collects the jobs, then writes the report
        return 0
    failed = [j.key for j in jobs if j.state in ("failed", "skipped")]
    _step(f"3/3 report -> {args.report}")
    code = subprocess.call([sys.executable, "-m", "reports.study_report", "--results", str(args.out),
                            "--runs", str(args.runs), "--out", str(args.report)])
    minutes = (time.monotonic() - t_all) / 60
    print(f"\nstudy finished in {minutes:.1f} min; {len(failed)} job(s) failed or skipped{': ' if failed else ''}"
          f"{', '.join(failed)}; report: {args.report / 'index.md'} (report exit {code})", flush=True)
    return 1 if failed or code else 0


if __name__ == "__main__":
    sys.exit(main())
