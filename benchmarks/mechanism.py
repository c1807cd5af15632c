"""Which part of MAST does the work, when the answer is known? A ground-truth mechanism benchmark (issues 25, 35).

    python benchmarks/mechanism.py                       # every arm x 5 seeds, report in reports/mechanism/
    python -m benchmarks.mechanism --probe steps3x --arms mast --steps 4500   # a probe of the cause

Data with known factors (benchmarks/mechanism_data.py): a content class and K = 3 style factors
(strongly perturbed, mildly perturbed, nuisance), mixed into 32-d observations by a fixed random
non-linear map; augmentation k perturbs only s_k, with a per-pair strength, and θ, δ are recorded per
pair. Arms (benchmarks/mechanism_runs.py): VICReg (λ 25); MAST; MAST with tied masks (the control that
removes only the per-dimension choice); MAST ``uncertainty: none``; the budget variant and its tied control;
each MAST-type arm's own matched-λ VICReg (w_eff; mean w for two arms); same steps, small MLP backbone +
VICReg expander, the project's model and loss. Measured per run: linear-probe content accuracy, linear R²
of each style factor from the backbone output, D_k (METHOD.md §5) with the learned masks, the known
answer and random masks, the mask-logit spread, |S_k|, the decomposition of the weights w, u's exponent
in δ. Verdicts stated in advance: benchmarks/mechanism_report.py (VERDICTS). Intervals over seeds:
transfer/stats.py. JSON on stdout and in ``OUT/results.json`` (or ``OUT/probes/NAME.json``); ``OUT/index.md``
and ``mechanism.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (ROOT, HERE):  # a fresh clone, and ``python -m benchmarks.mechanism``: this checkout's modules
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402

from plumbing.atomic import write_text_atomic  # noqa: E402
from mechanism_data import WorldSpec, make_world  # noqa: E402
from mechanism_report import OLD_TITLES, TITLE, summarise, write_report  # noqa: E402
from mechanism_runs import ARMS, MAST_ARMS, Settings, latents, matched_source, run_arm  # noqa: E402

#: the smallest sizes that still measure what the report claims (intervals, D_k's variance ratios)
MINIMUM = {"seeds": 1, "steps": 1, "batch": 4, "embed_dim": 2, "train_size": 64, "test_size": 10,
           "heldout_pairs": 64, "jobs": 1, "threads": 1}


class OneLineParser(argparse.ArgumentParser):
    """Bad input is one line naming the option and what was expected (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse(argv: list[str] | None) -> argparse.Namespace:
    d = Settings()
    p = OneLineParser(prog="python benchmarks/mechanism.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="training seeds per arm (0..N-1)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)} "
                   "(matched_X needs X)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--embed-dim", type=int, default=d.embed_dim, help="embedding width d (masks live here)")
    p.add_argument("--mask-init", type=float, default=d.mask_init, help="initial mask logit (METHOD: +3)")
    p.add_argument("--mask-coeff", type=float, default=d.mask_coeff, help="mask prior ρ of eq. (6)")
    p.add_argument("--train-size", type=int, default=d.train_size)
    p.add_argument("--test-size", type=int, default=d.test_size)
    p.add_argument("--heldout-pairs", type=int, default=d.heldout_pairs)
    p.add_argument("--threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--jobs", type=int, default=2, help="seeds trained in parallel processes (2 cores: 2)")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "mechanism", help="report folder")
    p.add_argument("--probe", default=None, help="write OUT/probes/NAME.json (a probe of the cause) instead "
                   "of OUT/results.json; index.md lists every probe found")
    p.add_argument("--no-report", action="store_true", help="JSON only (stdout and file), no index.md/PNG")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in args.arms if a not in ARMS]
    if bad or not args.arms:
        p.error(f"--arms: expected names from {list(ARMS)}, got {bad or args.arms}")
    orphans = [a for a in args.arms if matched_source(a) and matched_source(a)[0] not in args.arms]
    if orphans:
        p.error(f"--arms: {orphans[0]} resolves λ from the same-seed {matched_source(orphans[0])[0]} run; add "
                f"{matched_source(orphans[0])[0]}")
    for name, low in MINIMUM.items():
        if getattr(args, name) < low:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected an integer >= {low}")
    for name in ("mask_init", "mask_coeff"):
        if not math.isfinite(getattr(args, name)) or (name == "mask_coeff" and args.mask_coeff < 0):
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected a finite number"
                    + (" >= 0" if name == "mask_coeff" else ""))
    if args.probe is not None and not args.probe.replace("_", "").replace("-", "").isalnum():
        p.error(f"--probe: expected a plain name (letters, digits, - and _), got {args.probe!r}")
    problem = check_out(args.out, args.probe, args.no_report)
    if problem:
        p.error(problem)
    return args


def _ours(path: Path) -> bool:
    """Was this file written by this benchmark? (its JSON keys, or its report's title line)"""
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            return isinstance(data, dict) and {"arms", "verdict", "command"} <= set(data)
        if path.suffix == ".md":
            return path.read_text().startswith((TITLE, *OLD_TITLES))
    except (OSError, ValueError):
        return False
    return path.suffix == ".png" and _ours(path.parent / "index.md")


def check_out(out: Path, probe: str | None, no_report: bool) -> str | None:
    """The one-line reason ``--out`` cannot take this run's files, or None (checked before any training).

    The folder is created here (so an unwritable place fails now, not after minutes of training); a file
    the run would replace must be one this benchmark wrote (never overwrite what it did not create)."""
    blocked = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        return f"--out {out}: {blocked} exists and is not a folder"
    try:
        (out / "probes" if probe else out).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write_test_"):
            pass
    except OSError as e:
        return f"--out {out}: cannot write a report folder there ({e.strerror or e})"
    targets = [out / "probes" / f"{probe}.json" if probe else out / "results.json"]
    targets += [] if no_report else [out / "index.md", out / "mechanism.png"]
    foreign = next((t for t in targets if t.exists() and not _ours(t)), None)
    if foreign is not None:
        return f"--out {out}: {foreign.name} there was not written by this benchmark; choose another folder"
    return None


def settings(args: argparse.Namespace) -> Settings:
    return Settings(steps=args.steps, batch=args.batch, embed_dim=args.embed_dim, mask_init=args.mask_init,
                    mask_coeff=args.mask_coeff, train_size=args.train_size, test_size=args.test_size,
                    heldout_pairs=args.heldout_pairs)


def run_seed(args: argparse.Namespace, seed: int, work: str) -> list[dict]:
    """Every arm of one seed, MAST-type arms first (each matched control reads its arm's run folder); one process."""
    torch.set_num_threads(args.threads)
    s = settings(args)
    world = make_world(WorldSpec())
    lat = latents(world, s)
    runs = []
    for arm in sorted(args.arms, key=lambda a: a not in MAST_ARMS):
        t0 = time.perf_counter()
        runs.append(run_arm(world, lat, arm, seed, s, Path(work)))
        print(f"mechanism: {arm} seed {seed}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return runs


def run(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """All seeds (``--jobs`` processes), then intervals and verdict; times: wall, and CPU of all processes."""
    wall0, cpu0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="mechanism_") as work:
        if args.jobs == 1:
            per_seed = [run_seed(args, seed, work) for seed in range(args.seeds)]
        else:
            with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
                per_seed = list(pool.map(run_seed, [args] * args.seeds, range(args.seeds), [work] * args.seeds))
    runs = [r for rs in per_seed for r in rs]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu0 + (children.ru_utime + children.ru_stime) - (children0.ru_utime + children0.ru_stime)
    world = make_world(WorldSpec())
    result = summarise(runs, world, [a for a in ARMS if a in args.arms])
    result.update(settings=asdict(settings(args)), seeds=args.seeds, probe=args.probe,
                  command="python benchmarks/mechanism.py " + " ".join(args.argv),
                  time={"wall_s": round(time.perf_counter() - wall0, 1), "cpu_s": round(cpu, 1),
                        "jobs": args.jobs, "threads": args.threads, "cpus": os.cpu_count(),
                        "load_avg": [round(load0, 2), round(os.getloadavg()[0], 2)],
                        "machine": f"{platform.machine()}, {platform.python_version()}, torch {torch.__version__}"})
    return result, runs


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result, _ = run(args)
    text = json.dumps(result, indent=1)
    path = args.out / ("results.json" if args.probe is None else f"probes/{args.probe}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text + "\n")
    if not args.no_report and (args.out / "results.json").is_file():
        write_report(args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
