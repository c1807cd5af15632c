"""The MAST study report (``make study``, issue 14): ``python -m reports.study``.

    python -m reports.study --results runs/study/transfer --runs runs/study/pretrain \\
        --out reports/study

Reads the probe records of checkpoints named ``<arm>_s<seed>`` (transfer/study.py) and the
pretraining runs ``RUNS/study_<arm>_s<seed>/``; writes ``index.md`` (generated summary, per-arm
means with 95% t-intervals over seeds, MAST minus each control paired by seed, per-seed tables,
what each MAST run learned), ``summary.md`` (the generated summary alone), ``results.csv``
(per seed), ``arms.csv``, ``differences.csv``, ``learned.csv`` and two figures.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from mast.atomic import write_text_atomic  # noqa: E402
from reports.mast_plots import load_state, sensitivities, subspace_stats, uncertainty_curves  # noqa: E402
from reports.study_stats import Interval, paired_difference, t_interval, verdict  # noqa: E402
from reports.study_stats import __doc__ as STATS_METHOD  # noqa: E402
from transfer.records import read_jsonl  # noqa: E402

ARMS = ("vicreg", "vicreg_matched", "mast_unc_none", "mast")
ARM_LABELS = {"vicreg": "VICReg", "vicreg_matched": "VICReg (matched λ)", "mast_unc_none": "MAST (uncertainty: none)",
              "mast": "MAST"}
CONTROLS = ("vicreg", "vicreg_matched", "mast_unc_none")
#: (task name in the suite, metric, label): the headline metrics, in the order the summary reads them
TASKS = (("knn_color", "top1_k20", "kNN color"), ("linear_color", "top1", "linear color"),
         ("knn_side", "top1_k20", "kNN side"), ("linear_side", "top1", "linear side"),
         ("fewshot_shape_color", "acc_5way_1shot", "few-shot 5-way 1-shot"),
         ("fewshot_shape_color", "acc_5way_5shot", "few-shot 5-way 5-shot"),
         ("knn_shape", "top1_k20", "kNN shape"), ("linear_shape", "top1", "linear shape"))
_NAME = re.compile(r"^(?P<arm>[a-z_]+)_s(?P<seed>\d+)$")
Values = dict[str, dict[str, dict[int, float]]]  # label -> arm -> seed -> percent


def collect(records: list[dict]) -> tuple[Values, list[dict]]:
    """Per-task values of the study checkpoints (the last ok record wins) and the records used."""
    latest: dict[tuple[str, str], dict] = {}
    for rec in records:
        match = _NAME.match(str(rec.get("name", "")))
        if rec.get("status") == "ok" and match and match["arm"] in ARMS:
            latest[(rec["name"], rec.get("task_name"))] = rec
    values: Values = {label: {} for _, _, label in TASKS}
    for (name, task_name), rec in latest.items():
        match = _NAME.match(name)
        for task, metric, label in TASKS:
            value = rec.get("metrics", {}).get(metric)
            if task == task_name and isinstance(value, (int, float)):
                values[label].setdefault(match["arm"], {})[int(match["seed"])] = float(value)
    return values, list(latest.values())


def last_epoch_mean(metrics: Path, key: str) -> float | None:
    """Mean of ``key`` over the metrics.jsonl lines of the last logged epoch (None if never logged)."""
    if not metrics.is_file():
        return None
    lines = [r for r in read_jsonl(metrics) if key in r and "epoch" in r]
    if not lines:
        return None
    last = max(int(r["epoch"]) for r in lines)
    vals = [float(r[key]) for r in lines if int(r["epoch"]) == last]
    return sum(vals) / len(vals)


def run_facts(run_dir: Path) -> dict[str, Any]:
    """What one pretraining run says about itself: config, wall time and, for MAST, what it learned."""
    facts: dict[str, Any] = {"dir": run_dir}
    config_path = run_dir / "config.yaml"
    facts["config"] = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    summary = run_dir / "summary.csv"
    if summary.is_file():
        rows = list(csv.DictReader(io.StringIO(summary.read_text())))
        facts["steps"] = int(rows[-1]["step"]) if rows else 0
        facts["train_s"] = sum(float(r["elapsed_s"]) for r in rows if r.get("elapsed_s"))
    facts["w_mean_train"] = last_epoch_mean(run_dir / "metrics.jsonl", "w_mean")
    state_path = run_dir / "mast_state.pth"
    if not state_path.is_file() or facts["config"].get("method") != "mast":
        return facts
    state = load_state(state_path)
    names = [str(n) for n in state["aug_names"]]
    tau = float(state.get("tau", 0.5))
    held = state.get("heldout") or {}
    rho = [None] * len(names)
    if isinstance(held.get("u"), torch.Tensor) and held["u"].numel():
        rho = [c["rho"] for c in uncertainty_curves(held["delta"].double().numpy(), held["u"].double().numpy())]
    facts["learned"] = {
        "aug_names": names, "tau": tau, "d": int(state["mask_logits"].shape[1]),
        "u_bar": state["u_bar"].tolist(), "logit_std": state["mask_logits"].std(dim=1).tolist(),
        "subspace_size": subspace_stats(sensitivities(state), tau)["size"], "rho": rho,
        "w_mean_heldout": held.get("w_mean"),
        "D": _differentiation(held, len(names)),
    }
    return facts


def _differentiation(held: dict, k: int) -> list[float | None]:
    """D_k per augmentation from the held-out pass (METHOD.md §5); None where absent or undefined."""
    diff = held.get("differentiation")
    values = diff.get("D") if isinstance(diff, dict) else None
    return list(values) if isinstance(values, list) and len(values) == k else [None] * k


# ----------------------------------------------------------------------------- text
def _cell(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def summary_lines(values: Values) -> list[str]:
    """The generated summary: one sentence per control and task, grouped by control."""
    lines = []
    for control in CONTROLS:
        diffs = {label: paired_difference(values[label].get("mast", {}), values[label].get(control, {}))
                 for _, _, label in TASKS}
        diffs = {label: d for label, d in diffs.items() if d is not None}
        if not diffs:
            continue
        groups = {"higher": [k for k, d in diffs.items() if d.excludes_zero and d.mean > 0],
                  "lower": [k for k, d in diffs.items() if d.excludes_zero and d.mean < 0],
                  "no distinguishable difference": [k for k, d in diffs.items() if not d.excludes_zero]}
        n = max(d.n for d in diffs.values())
        lead = ("; ".join(f"{g} on {', '.join(ks)}" for g, ks in groups.items() if ks) if n >= 2 else
                "1 seed, so no intervals and no statement about any difference")
        lines += [f"**MAST − {ARM_LABELS[control]}** (95% intervals over {n} paired seed(s)): {lead}.", ""]
        lines += [f"- {verdict(label, ARM_LABELS[control], d)}" for label, d in diffs.items()] + [""]
    return lines


def arms_table(values: Values) -> list[str]:
    present = [a for a in ARMS if any(a in values[label] for _, _, label in TASKS)]
    out = ["| task | " + " | ".join(ARM_LABELS[a] for a in present) + " |",
           "|---|" + "---:|" * len(present)]
    for _, _, label in TASKS:
        cells = [t_interval(list(values[label][a].values())).text() if values[label].get(a) else "–" for a in present]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def differences_table(values: Values) -> list[str]:
    out = ["| task | " + " | ".join(f"MAST − {ARM_LABELS[c]}" for c in CONTROLS) + " |", "|---|" + "---:|" * len(CONTROLS)]
    for _, _, label in TASKS:
        cells = []
        for c in CONTROLS:
            d = paired_difference(values[label].get("mast", {}), values[label].get(c, {}))
            cells.append("–" if d is None else d.text(with_sign=True) + (" †" if d.excludes_zero else ""))
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def seed_table(values: Values) -> list[str]:
    seeds = sorted({s for label in values for a in values[label].values() for s in a})
    out = ["| task | arm | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|---|" + "---:|" * len(seeds)]
    for _, _, label in TASKS:
        for arm in ARMS:
            if arm in values[label]:
                out.append(f"| {label} | {ARM_LABELS[arm]} | " +
                           " | ".join(_cell(values[label][arm].get(s), "{:.1f}") for s in seeds) + " |")
    return out + [""]


def learned_tables(runs: dict[str, dict]) -> list[str]:
    """Per MAST run: ū_k, mask-logit std, |S_k| at τ, ρ(u_k, δ_k) per augmentation; mean w."""
    mast_runs = {n: f for n, f in runs.items() if "learned" in f}
    if not mast_runs:
        return ["No MAST run with a mast_state.pth was found."]
    first = next(iter(mast_runs.values()))["learned"]
    names, out = first["aug_names"], []
    for key, title in (("u_bar", "ū_k (running mean of u over training pairs)"),
                       ("logit_std", "spread of the mask logits φ_k over dimensions (std)"),
                       ("subspace_size", f"subspace size |S_k| at τ = {first['tau']:g} (of d = {first['d']})"),
                       ("D", "mask differentiation D_k on held-out images (METHOD.md §5: Spearman over dimensions of "
                             "1 − m_kj against the measured sensitivity to k; ≈ 0: S_k is a per-augmentation "
                             "weight, not a subspace)"),
                       ("rho", "Spearman ρ(u_k, δ_k) on held-out pairs")):
        out += [f"**{title}**", "", "| run | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for run, facts in mast_runs.items():
            fmt = "{:.0f}" if key == "subspace_size" else "{:.2f}"
            out.append(f"| {run} | " + " | ".join(_cell(v, fmt) for v in facts["learned"].get(key, [])) + " |")
        out.append("")
    out += ["**mean invariance weight w (eq. 4) and λ**", "",
            "| run | mean w, last epoch (training) | mean w, held-out pairs | λ |", "|---|---:|---:|---:|"]
    for run, facts in runs.items():
        learned = facts.get("learned", {})
        lam = (facts["config"].get("loss") or {}).get("inv_coeff")
        out.append(f"| {run} | {_cell(facts.get('w_mean_train'), '{:.3f}')} | "
                   f"{_cell(learned.get('w_mean_heldout'), '{:.3f}')} | {_cell(lam, '{:.2f}')} |")
    return out + [""]


# ----------------------------------------------------------------------------- files
def _csv(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def write_csvs(values: Values, runs: dict[str, dict], out: Path) -> None:
    per_seed, arms, diffs, learned = [], [], [], []
    for task, metric, label in TASKS:
        for arm in ARMS:
            seeds = values[label].get(arm, {})
            per_seed += [{"task": task, "metric": metric, "arm": arm, "seed": s, "value": _num(v)}
                         for s, v in sorted(seeds.items())]
            if seeds:
                iv = t_interval(list(seeds.values()))
                arms.append({"task": task, "metric": metric, "arm": arm, "n_seeds": iv.n,
                             "mean": _num(iv.mean), "lo": _num(iv.lo), "hi": _num(iv.hi)})
        for control in CONTROLS:
            d = paired_difference(values[label].get("mast", {}), values[label].get(control, {}))
            if d is not None:
                diffs.append({"task": task, "metric": metric, "comparison": f"mast-{control}", "n_seeds": d.n,
                              "delta": _num(d.mean), "delta_lo": _num(d.lo), "delta_hi": _num(d.hi),
                              "excludes_zero": d.excludes_zero})
    for run, facts in runs.items():
        info = facts.get("learned")
        for k, aug in enumerate(info["aug_names"] if info else []):
            learned.append({"run": run, "augmentation": aug, "u_bar": _num(info["u_bar"][k]),
                            "mask_logit_std": _num(info["logit_std"][k]), "subspace_size": info["subspace_size"][k],
                            "rho_u_delta": _num(info["rho"][k]), "mask_differentiation": _num(info.get("D", [None] * (k + 1))[k]),
                            "w_mean_train": _num(facts.get("w_mean_train")),
                            "w_mean_heldout": _num(info.get("w_mean_heldout"))})
    write_text_atomic(out / "results.csv", _csv(per_seed, ["task", "metric", "arm", "seed", "value"]))
    write_text_atomic(out / "arms.csv", _csv(arms, ["task", "metric", "arm", "n_seeds", "mean", "lo", "hi"]))
    write_text_atomic(out / "differences.csv", _csv(diffs, ["task", "metric", "comparison", "n_seeds", "delta",
                                                             "delta_lo", "delta_hi", "excludes_zero"]))
    write_text_atomic(out / "learned.csv", _csv(learned, ["run", "augmentation", "u_bar", "mask_logit_std",
                                                           "subspace_size", "rho_u_delta", "mask_differentiation", "w_mean_train",
                                                           "w_mean_heldout"]))


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path.name


def plot_differences(values: Values, path: Path) -> str:
    """Forest plot: MAST minus each control per task, paired-by-seed 95% t-interval."""
    labels = [label for _, _, label in TASKS]
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(labels) + 1.2))
    colors = {"vicreg": "tab:blue", "vicreg_matched": "tab:green", "mast_unc_none": "tab:purple"}
    for j, control in enumerate(CONTROLS):
        for i, label in enumerate(labels):
            d = paired_difference(values[label].get("mast", {}), values[label].get(control, {}))
            if d is None:
                continue
            y = i + (j - 1) * 0.22
            err = None if d.lo is None else [[d.mean - d.lo], [d.hi - d.mean]]
            ax.errorbar(d.mean, y, xerr=err, fmt="o", color=colors[control], ms=4, capsize=3,
                        label=f"MAST − {ARM_LABELS[control]}" if i == 0 else None)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("difference in accuracy (points); 95% t-interval over seeds, paired by seed")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_arms(values: Values, path: Path) -> str:
    """Per task: every arm's per-seed values (dots) and its mean with the 95% t-interval."""
    labels = [label for _, _, label in TASKS]
    cols = 4
    fig, axes = plt.subplots(-(-len(labels) // cols), cols, figsize=(13, 5.6), squeeze=False)
    for ax, label in zip(axes.flat, labels):
        for i, arm in enumerate(ARMS):
            seeds = values[label].get(arm)
            if not seeds:
                continue
            iv = t_interval(list(seeds.values()))
            ax.scatter([i] * len(seeds), list(seeds.values()), s=10, color="gray", zorder=3)
            err = None if iv.lo is None else [[iv.mean - iv.lo], [iv.hi - iv.mean]]
            ax.errorbar(i + 0.15, iv.mean, yerr=err, fmt="s", color="tab:red" if arm == "mast" else "tab:blue",
                        ms=4, capsize=3)
        ax.set_xticks(range(len(ARMS)), ["VICReg", "VICReg\nmatched λ", "MAST\nunc. none", "MAST"], fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("accuracy (%)", fontsize=8)
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    return _save(fig, path)


def _code_version() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def settings_line(runs: dict[str, dict]) -> str:
    """The pretraining settings, read from the first run's config.yaml."""
    facts = next((f for f in runs.values() if f["config"]), None)
    if facts is None:
        return "No pretraining run directory was found."
    c = facts["config"]
    o, m, a = c.get("optim", {}), c.get("model", {}), c.get("augment", {})
    train_min = sum(f.get("train_s", 0.0) for f in runs.values()) / 60
    return (f"Pretraining: {m.get('arch')}, expander {m.get('expander')}, {a.get('size')} px views, batch "
            f"{o.get('batch_size')}, {o.get('name')} (base lr {o.get('base_lr')}), {o.get('epochs')} epochs = "
            f"{facts.get('steps', '?')} steps per run; {len(runs)} runs, {train_min:.0f} min of training loops "
            "in all (one thread each).")


def read_results(results: Path) -> list[dict]:
    """Records of ``results``: one results.jsonl, or every results.jsonl below a folder (one per run)."""
    files = [results] if results.is_file() else sorted(results.rglob("results.jsonl"))
    return [r for f in files for r in read_jsonl(f)]


def write_report(results: Path, runs_root: Path, out: Path) -> list[str]:
    """Build every file of the report; returns the generated summary lines."""
    records = read_results(results)
    values, used = collect(records)
    names = sorted({r["name"] for r in used}, key=lambda n: (int(_NAME.match(n)["seed"]), ARMS.index(_NAME.match(n)["arm"])))
    runs = {n: run_fact for n in names if (run_fact := run_facts(runs_root / f"study_{n}"))["config"]}
    out.mkdir(parents=True, exist_ok=True)
    write_csvs(values, runs, out)
    fig_diff = plot_differences(values, out / "differences.png")
    fig_arms = plot_arms(values, out / "arms.png")
    seeds = sorted({int(_NAME.match(n)["seed"]) for n in names})
    summary = summary_lines(values)
    head = [f"Generated by `python -m reports.study` from {len(used)} probe records of {len(names)} checkpoints "
            f"({len(seeds)} pretraining seed(s): {', '.join(map(str, seeds))}). Each sentence compares MAST (eq. 4 "
            "v2) with one control on one task, by the 95% t-interval of the per-seed differences (paired by "
            "seed); † in the tables marks an interval that excludes 0.", ""]
    write_text_atomic(out / "summary.md", "\n".join(head + summary) + "\n")
    iters = sorted({str((r.get("config") or {}).get("max_iter")) for r in used if r.get("task") == "linear"})
    lam = [f"{n}: λ = {f['config'].get('loss', {}).get('inv_coeff', float('nan')):.2f}"
           for n, f in runs.items() if n.startswith("vicreg_matched")]
    text = [
        "# MAST v2 study: MAST against VICReg and two controls, over pretraining seeds", "",
        f"How this was made: `make study` (`python -m transfer.study`), report rebuilt with `python -m reports.study "
        f"--results {results} --runs {runs_root} --out {out}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"report code {_code_version()}.", "",
        settings_line(runs) + " Arms: VICReg (λ = 25); VICReg with λ matched to the same-seed MAST run's mean "
        "invariance weight (λ = 25 × mean w over its last epoch; " + ("; ".join(lam) or "none") + "); MAST with "
        "`model.uncertainty=none`; MAST. Probes (transfer/suites/study.yaml): kNN (k = 20) and linear (L-BFGS "
        f"sweep, ≤ {'/'.join(iters) or '?'} iterations per fit) on the color, side and shape tasks, 5-way few-shot on held-out "
        "shape×color classes (2000 episodes). All numbers are accuracies in percent.", "",
        "## Summary (generated)", "", *head, *summary,
        "## How the intervals are computed", "", *[ln.strip() for ln in STATS_METHOD.strip().splitlines()], "",
        "## Per arm: mean over seeds [95% t-interval]", "", *arms_table(values), "",
        "## MAST minus each control, paired by seed [95% t-interval]", "", *differences_table(values), "",
        f"![MAST minus each control]({fig_diff})", "", f"![every arm, every seed]({fig_arms})", "",
        "## Per seed", "", *seed_table(values),
        "## What MAST learned, per run (METHOD.md eq. 1', §5)", "", *learned_tables(runs),
        "Files: [summary.md](summary.md), [results.csv](results.csv) (per seed), [arms.csv](arms.csv), "
        "[differences.csv](differences.csv) (`delta`, `delta_lo`, `delta_hi`, `n_seeds`), [learned.csv](learned.csv).", ""]
    write_text_atomic(out / "index.md", "\n".join(text))
    return head + summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.study", description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("runs/study/transfer"),
                   help="a results.jsonl, or the folder holding one per run (transfer.study's --out)")
    p.add_argument("--runs", type=Path, default=Path("runs/study/pretrain"), help="the study's pretraining runs")
    p.add_argument("--out", type=Path, default=Path("reports/study"))
    args = p.parse_args(argv)
    if not (args.results.is_file() or any(args.results.rglob("results.jsonl"))):
        print(f"error: --results {args.results}: no results.jsonl there (run python -m transfer.study first)",
              file=sys.stderr)
        return 2
    lines = write_report(args.results, args.runs, args.out)
    print("\n".join(lines))
    print(f"report: {args.out / 'index.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
