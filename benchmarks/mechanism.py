"""Does MAST's mechanism work when the answer is known? A ground-truth mechanism benchmark (issue 25).

    python benchmarks/mechanism.py                       # full size: 4 arms x 5 seeds, report in reports/mechanism/
    python benchmarks/mechanism.py --probe steps3x --arms mast --steps 4500   # a probe of the cause

Data with known factors (benchmarks/mechanism_data.py): a content class and K = 3 style factors
(strongly perturbed, mildly perturbed, nuisance), mixed into 32-d observations by a fixed random
non-linear map; augmentation k perturbs only s_k, with a per-pair strength, and θ, δ are recorded per
pair. Arms: VICReg (λ 25), VICReg at matched λ (``loss.inv_coeff=auto:`` logic, mast/matched.py), MAST
``uncertainty: none``, MAST; same steps, small MLP backbone + VICReg expander, the project's model and
loss. Measured per run: linear-probe content accuracy, linear R² of each style factor from the
backbone output, per augmentation the mask differentiation D_k (METHOD.md §5, mast/differentiation.py)
with the learned masks, with the known answer (∂z/∂s by autograd) and with random masks, the mask-logit
spread, |S_k|, ρ(u_k, δ_k). Intervals over seeds: transfer/stats.py (hierarchical bootstrap). JSON on
stdout and in ``OUT/results.json`` (or ``OUT/probes/NAME.json``); ``OUT/index.md`` and ``mechanism.png``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # a fresh clone: import this checkout's mast/ and transfer/
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mast.atomic import write_text_atomic  # noqa: E402
from mechanism_data import WorldSpec, make_world  # noqa: E402
from mechanism_report import summarise, write_report  # noqa: E402
from mechanism_runs import ARMS, Settings, latents, run_arm  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    d = Settings()
    p = argparse.ArgumentParser(prog="python benchmarks/mechanism.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="training seeds per arm (0..N-1)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)} "
                   "(vicreg_matched needs mast)")
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
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in args.arms if a not in ARMS]
    if bad or not args.arms:
        p.error(f"--arms: expected names from {list(ARMS)}, got {bad or args.arms}")
    if "vicreg_matched" in args.arms and "mast" not in args.arms:
        p.error("--arms: vicreg_matched resolves λ from the same-seed mast run; add mast")
    if args.jobs < 1 or args.seeds < 1 or args.steps < 1 or args.batch < 4 or args.embed_dim < 2:
        p.error("expected --jobs >= 1, --seeds >= 1, --steps >= 1, --batch >= 4, --embed-dim >= 2")
    if args.probe is not None and not args.probe.replace("_", "").replace("-", "").isalnum():
        p.error(f"--probe: expected a plain name (letters, digits, - and _), got {args.probe!r}")
    return args


def settings(args: argparse.Namespace) -> Settings:
    return Settings(steps=args.steps, batch=args.batch, embed_dim=args.embed_dim, mask_init=args.mask_init,
                    mask_coeff=args.mask_coeff, train_size=args.train_size, test_size=args.test_size,
                    heldout_pairs=args.heldout_pairs)


def run_seed(args: argparse.Namespace, seed: int, work: str) -> list[dict]:
    """Every arm of one seed, MAST first (the matched control reads its run folder); one process."""
    torch.set_num_threads(args.threads)
    s = settings(args)
    world = make_world(WorldSpec())
    lat = latents(world, s)
    runs = []
    for arm in sorted(args.arms, key=lambda a: a != "mast"):
        t0 = time.perf_counter()
        runs.append(run_arm(world, lat, arm, seed, s, Path(work)))
        print(f"mechanism: {arm} seed {seed}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return runs


def run(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """All seeds (``--jobs`` processes), then intervals and verdict; times: wall, and CPU of all processes."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
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
                  command="python benchmarks/mechanism.py " + " ".join(sys.argv[1:]),
                  time={"wall_s": round(time.perf_counter() - wall0, 1), "cpu_s": round(cpu, 1),
                        "jobs": args.jobs, "threads": args.threads,
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
