"""Measurement: the project files a newcomer opens to follow three paths end to end (prints JSON).

    python benchmarks/newcomer_paths.py [--repo DIR] [--keep WORKDIR]

Issue 33's three paths, each measured by RUNNING it in a fresh Python process whose ``sys.path`` starts
with ``--repo`` (default: this checkout) and whose cwd is ``--repo``. An ``atexit`` hook (registered
first, so it runs last) records every module in ``sys.modules`` whose file lies in one of the project's
packages (``mast``, ``transfer``, ``reports``, ``plumbing`` where the tree has it; ``benchmarks`` and
``tests`` are not counted), plus the entry file itself (run as ``__main__``, so not in ``sys.modules``
under its own name). ``__init__.py`` files are counted (an import opens them); ``files_without_init``
leaves them out. A project module imported from outside ``--repo`` (e.g. the editable install's
/work/main) is an error, and every path prints the ``mast.__file__`` it imported.

1. ``knn_vit``: ``python -m transfer.probes.knn --ckpt dino.pth --data DIR --out OUT --cache-dir C
   --no-progress`` really run (it must exit 0 with an ``ok`` record) on a tiny DINO-format ViT
   checkpoint (``tests/vit_writers.py``: teacher/student dicts, depth 4, width 192, 32 px, patch 16)
   and the tiny synthetic ImageFolder ``classification/color`` (``SyntheticSpec.tiny()``).
2. ``pretrain_step``: ``python -m mast.pretrain`` really run with the tests' tiny arguments
   (``tests/conftest.py:tiny_args``: demo config, ResNet-18 at 32 px, batch 16) plus ``optim.epochs=1
   runtime.stop_after_steps=2``: config -> augment -> model -> loss -> optim -> two steps -> last.pth
   (stopped before the epoch's end, so no kNN monitor pass runs).
3. ``run_all_slurm``: SLURM cannot be started here cheaply, so this path is the UNION of two processes.
   (a) the orchestrator up to submission: ``transfer/run_all.py`` executed (not as ``__main__``), then the
   orchestrator module's own functions called in ``_main``/``_run``'s order on ``--ckpt a.pth --ckpt
   b.pth --launcher slurm --out OUT`` (two ResNet-18 state dicts; the default demo suite):
   ``build_parser().parse_args``, ``load_suite``, ``resolve_checkpoints``, ``plan``, ``slurm_options``,
   ``precheck`` (the dataset check; the demo datasets are absent here, so it records them skipped),
   then per job still to run ``job_command``, ``task_resources``, ``task_env``. Not called: the
   ``Runner`` (it refuses ``--launcher slurm`` without ``sbatch`` on PATH) and ``execute``; their
   modules are imported by the orchestrator anyway. Each function is looked up in the orchestrator
   module first, then in the modules named in ``PLAN_MODULES`` (where a tree may have moved it).
   (b) what runs inside the SLURM job: submitit unpickles the job runner's ``Command``, i.e. imports the
   module that defines it; that module is found per tree as ``Runner.__module__``'s ``Command.__module__``
   (fallback: ``JOB_COMMAND_MODULES``) and imported in a fresh process. The task the job then starts
   (e.g. the kNN probe of path 1) is a separate path and not counted.

Lines: ``lines`` = every line of the file (``wc -l``), ``nonblank`` = lines with a non-space character;
a path's ``list`` gives each file with its ``lines``.
``packages``: both counts for every ``*.py`` file of the tree by package: ``mast``, ``transfer`` (its
top-level files), ``transfer/<subpackage>`` (config folders such as ``mmseg_configs`` included),
``reports``, ``plumbing``, ``benchmarks``, ``tests``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGES = ("mast", "transfer", "reports", "plumbing")  # what a path's files are counted from
TREE = (*PACKAGES, "benchmarks", "tests")                # what "lines per package" covers
PLAN_MODULES = ("transfer.orchestrate.suite_jobs", "transfer.orchestrate.run_all")
JOB_COMMAND_MODULES = ("plumbing.job_command", "transfer.orchestrate.job_command")

# Runs in each measured process: python -c HOOK REPO OUT_JSON PACKAGES_JSON ACTION ARGS_JSON
HOOK = r'''
import atexit, json, os, sys
repo, out_file, packages, action, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
sys.path.insert(0, repo)
entries = []

def _project():
    files, foreign = set(entries), set()
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if not path:
            continue
        path = os.path.realpath(path)
        rel = os.path.relpath(path, repo)
        if not rel.startswith("..") and rel.split(os.sep)[0] in packages:
            files.add(rel)
        elif name.split(".")[0] in packages:
            foreign.add(f"{name}: {path}")
    return files, foreign

def _dump():
    files, foreign = _project()
    mast = sys.modules.get("mast")
    with open(out_file, "w") as f:
        json.dump({"files": sorted(files), "foreign": sorted(foreign),
                   "mast_file": getattr(mast, "__file__", None), "steps": spec.get("steps", []),
                   "job_command_module": spec.get("job_command_module")}, f)

atexit.register(_dump)

def _run_module(name, argv):
    import importlib.util, runpy
    found = importlib.util.find_spec(name)
    entries.append(os.path.relpath(os.path.realpath(found.origin), repo))
    sys.argv = [found.origin, *argv]
    runpy.run_module(name, run_name="__main__", alter_sys=True)

def _find(name, first, candidates):
    import importlib
    if hasattr(first, name):
        return getattr(first, name)
    for mod in candidates:
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        if hasattr(m, name):
            return getattr(m, name)
    return None

def _run_all(argv):
    import importlib, runpy
    from pathlib import Path
    entry = os.path.join(repo, "transfer", "run_all.py")
    entries.append("transfer/run_all.py")
    main = runpy.run_path(entry, run_name="run_all_entry")["main"]
    orch = importlib.import_module(main.__module__)
    f = lambda name: _find(name, orch, spec["plan_modules"])
    steps = spec.setdefault("steps", [])
    log = lambda text: steps.append(f"{text} [project files so far: {len(_project()[0])}]")
    log(f"run transfer/run_all.py (imports {orch.__name__})")
    args = f("build_parser")().parse_args(argv)
    log(f"{orch.__name__}.build_parser().parse_args")
    load_suite = f("load_suite")
    suite = load_suite(args.suite, f("parse_vars")(args.var), args.tasks, f("parse_task_args")(args.task_args), args.smoke)
    log(f"load_suite: {len(suite.tasks)} tasks")
    ckpts = f("resolve_checkpoints")(args.ckpt, args.name, args.backbone)
    log(f"resolve_checkpoints: {len(ckpts)} checkpoints")
    plan = f("plan")
    todo, done = plan(ckpts, suite, args.out, args.force)
    log(f"{plan.__module__}.plan: {len(todo)} jobs to run")
    slurm = f("slurm_options")(args, suite.slurm)
    args.out.mkdir(parents=True, exist_ok=True)
    todo, unrunnable = f("precheck")(todo, args.out / "results.jsonl")
    log(f"slurm_options, precheck: {len(todo)} runnable, {len(unrunnable)} recorded skipped/failed")
    for job in todo:
        f("job_command")(job)
        f("task_resources")(job.spec, slurm)
        f("task_env")(job.spec)
    log(f"job_command, task_resources, task_env for {len(todo)} jobs")
    runner = f("Runner")
    command = getattr(sys.modules[runner.__module__], "Command", None)
    spec["job_command_module"] = command.__module__ if command is not None else None

def _import(names):
    import importlib
    for name in names:
        try:
            importlib.import_module(name)
            spec.setdefault("steps", []).append(f"import {name}")
            return
        except ImportError:
            continue
    raise SystemExit(f"none of {names} imports")

if action == "module":
    _run_module(spec["module"], spec["argv"])
elif action == "run_all":
    _run_all(spec["argv"])
else:
    _import(spec["modules"])
'''

SETUP = r'''
import sys, json
from pathlib import Path
repo, work = sys.argv[1], Path(sys.argv[2])
sys.path[:0] = [repo, repo + "/tests"]
import torch, torchvision
import vit_writers as W
from mast.data.synthetic import SyntheticSpec, ensure_dataset
root = ensure_dataset(work / "synthetic", SyntheticSpec.tiny())
ref, other = W.timm_vit(16, 32, seed=0, dim=192, depth=4), W.timm_vit(16, 32, seed=1, dim=192, depth=4)
torch.save(W.dino(ref.state_dict(), other.state_dict()), work / "dino_vits16.pth")
for seed, name in ((0, "a.pth"), (1, "b.pth")):
    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18().state_dict(), work / name)
print(json.dumps(str(root)))
'''


def _env(repo: Path, work: Path) -> dict[str, str]:
    """--repo first on the path; one thread; the probes' default cache inside the working folder."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", XDG_CACHE_HOME=str(work / "xdg"))
    env["PYTHONPATH"] = os.pathsep.join([str(repo), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _measure(repo: Path, work: Path, label: str, action: str, spec: dict) -> dict:
    """Run one process of a path; return what its exit hook recorded."""
    out = work / f"{label}.json"
    env = _env(repo, work)
    proc = subprocess.run([sys.executable, "-c", HOOK, str(repo), str(out), json.dumps(PACKAGES), action,
                           json.dumps(spec)], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"newcomer_paths: {label} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    got = json.loads(out.read_text())
    if got["foreign"]:
        raise SystemExit(f"newcomer_paths: {label} imported project modules from outside {repo}: {got['foreign']}")
    if not str(Path(got["mast_file"] or "").resolve()).startswith(str(repo)):
        raise SystemExit(f"newcomer_paths: {label} imported mast from {got['mast_file']}, expected under {repo}")
    return got


def _count(path: Path) -> tuple[int, int]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return len(lines), sum(1 for line in lines if line.strip())


def _summary(repo: Path, files: list[str], extra: dict) -> dict:
    counts = {f: _count(repo / f) for f in sorted(files)}
    return {"files": len(counts), "files_without_init": sum(1 for f in counts if not f.endswith("__init__.py")),
            "lines": sum(c[0] for c in counts.values()), "nonblank": sum(c[1] for c in counts.values()),
            **extra, "list": {f: c[0] for f, c in counts.items()}}


def package_of(rel: Path) -> str | None:
    """``mast`` / ``transfer`` (top-level files) / ``transfer/<sub>`` / ``reports`` / ... or None."""
    top = rel.parts[0]
    if top not in TREE or len(rel.parts) < 2:
        return None
    if top == "transfer" and len(rel.parts) > 2:
        return f"transfer/{rel.parts[1]}"
    return top


def lines_per_package(repo: Path) -> dict:
    counts: dict[str, dict[str, int]] = {}
    for top in TREE:
        for path in sorted((repo / top).rglob("*.py")) if (repo / top).is_dir() else []:
            if "__pycache__" in path.parts:
                continue
            name = package_of(path.relative_to(repo))
            total, nonblank = _count(path)
            c = counts.setdefault(name, {"files": 0, "lines": 0, "nonblank": 0})
            c["files"], c["lines"], c["nonblank"] = c["files"] + 1, c["lines"] + total, c["nonblank"] + nonblank
    counts["all"] = {k: sum(c[k] for c in counts.values()) for k in ("files", "lines", "nonblank")}
    return counts


def measure(repo: Path, work: Path) -> dict:
    env = _env(repo, work)
    setup = subprocess.run([sys.executable, "-c", SETUP, str(repo), str(work)], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=600)
    if setup.returncode != 0:
        raise SystemExit(f"newcomer_paths: setup failed:\n{setup.stderr[-3000:]}")
    root = Path(json.loads(setup.stdout.strip().splitlines()[-1]))
    ckpt = work / "dino_vits16.pth"
    knn_out = work / "knn_out"
    knn = _measure(repo, work, "knn_vit", "module", {"module": "transfer.probes.knn", "argv": [
        "--ckpt", str(ckpt), "--data", str(root / "classification" / "color"), "--out", str(knn_out),
        "--cache-dir", str(work / "cache"), "--no-progress"]})
    status = json.loads((knn_out / "record.json").read_text())["status"]
    if status != "ok":
        raise SystemExit(f"newcomer_paths: the kNN probe's record says {status}, expected ok")
    tiny = ["--config", "demo", f"out_dir={work / 'pretrain'}", f"data.root={root / 'unlabeled'}",
            "data.synthetic=null", f"knn.root={root / 'classification' / 'shape'}", "data.num_workers=0",
            "data.heldout_pairs=8", "model.expander=[32,32]", "augment.size=32", "augment.blur_kernel_size=5",
            "optim.batch_size=16", "optim.epochs=1", "optim.warmup_epochs=1", "runtime.threads=1",
            "runtime.progress=false", "runtime.deterministic=true", "runtime.stop_after_steps=2",
            "--name", "newcomer"]
    step = _measure(repo, work, "pretrain_step", "module", {"module": "mast.pretrain", "argv": tiny})
    if not (work / "pretrain" / "newcomer" / "last.pth").exists():
        raise SystemExit("newcomer_paths: pretraining wrote no last.pth after its steps")
    orch = _measure(repo, work, "run_all_orchestrator", "run_all", {"plan_modules": list(PLAN_MODULES), "argv": [
        "--ckpt", str(work / "a.pth"), "--ckpt", str(work / "b.pth"), "--launcher", "slurm",
        "--out", str(work / "transfer")]})
    job_modules = [orch["job_command_module"]] if orch["job_command_module"] else list(JOB_COMMAND_MODULES)
    job = _measure(repo, work, "run_all_job", "import", {"modules": job_modules})
    return {
        "knn_vit": _summary(repo, knn["files"], {"mast_file": knn["mast_file"]}),
        "pretrain_step": _summary(repo, step["files"], {"mast_file": step["mast_file"]}),
        "run_all_slurm": _summary(repo, sorted(set(orch["files"]) | set(job["files"])), {
            "mast_file": orch["mast_file"], "steps": orch["steps"] + job["steps"],
            "orchestrator_files": len(orch["files"]), "job_files": job["files"]}),
    }


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                   help="checkout to measure (default: this one)")
    p.add_argument("--keep", type=Path, default=None, help="working folder to keep (default: a temporary one, removed)")
    args = p.parse_args(argv)
    repo = args.repo.resolve()
    if not (repo / "mast" / "__init__.py").is_file() or not (repo / "transfer" / "run_all.py").is_file():
        p.error(f"--repo {args.repo}: expected a MAST checkout (mast/__init__.py and transfer/run_all.py)")
    work = Path(tempfile.mkdtemp(prefix="newcomer_")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        paths = measure(repo, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {"repo": str(repo), "commit": _git(repo, "rev-parse", "HEAD"),
              "dirty": bool(_git(repo, "status", "--porcelain", "--untracked-files=no")),
              "counted_packages": [p for p in PACKAGES if (repo / p).is_dir()],
              "paths": paths, "packages": lines_per_package(repo)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
