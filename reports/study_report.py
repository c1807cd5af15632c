"""The MAST study report (``make study``, issue 14): ``python -m reports.study_report``.

    python -m reports.study_report --results runs/study/transfer --runs runs/study/pretrain \\
        --out reports/study

Reads the probe records of checkpoints named ``<arm>_s<seed>`` (transfer/orchestrate/study.py: one
results.jsonl per checkpoint) and the pretraining runs ``RUNS/study_<arm>_s<seed>/``. The numbers
go through the same path as every other report (docs/STATISTICS.md): the records become one
:class:`reports.results.Results` whose groups are the arms and whose seeds are the records'
``pretrain_seed``; :mod:`reports.compare` gives each arm's mean over seeds with its hierarchical
bootstrap interval and MAST minus each control, paired by test item and by pretraining seed.
Writes ``index.md``, ``summary.md`` (the generated summary alone), ``results.csv`` (per seed),
``arms.csv``, ``differences.csv``, ``learned.csv`` and two figures.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mast.atomic import write_text_atomic  # noqa: E402
from mast.provenance import code_version  # noqa: E402
from reports import compare, study_runs  # noqa: E402
from reports.compare import Delta  # noqa: E402
from reports.plots import save_figure  # noqa: E402
from reports.results import Results, well_formed, finite, latest_records, results_from_records  # noqa: E402
from reports.tables import Cell, fmt, fmt_interval, format_cell, format_delta  # noqa: E402
from transfer.records import iter_jsonl  # noqa: E402

ARMS = ("vicreg", "vicreg_matched", "mast_unc_none", "mast")
ARM_LABELS = {"vicreg": "VICReg", "vicreg_matched": "VICReg (matched λ)", "mast_unc_none": "MAST (uncertainty: none)",
              "mast": "MAST"}
CONTROLS = ("vicreg", "vicreg_matched", "mast_unc_none")
MATCHED = {"mast": "vicreg_matched"}  # a MAST arm -> the VICReg arm whose λ matches its mean w (mast/matched.py)
#: (task name in the suite, metric, label): the headline metrics, in the order the summary reads them
TASKS = (("knn_color", "top1_k20", "kNN color"), ("linear_color", "top1", "linear color"),
         ("knn_side", "top1_k20", "kNN side"), ("linear_side", "top1", "linear side"),
         ("fewshot_shape_color", "acc_5way_1shot", "few-shot 5-way 1-shot"),
         ("fewshot_shape_color", "acc_5way_5shot", "few-shot 5-way 5-shot"),
         ("knn_shape", "top1_k20", "kNN shape"), ("linear_shape", "top1", "linear shape"))


def arm_and_seed(name: str) -> tuple[str, int] | None:
    """``mast_unc_none_s2`` -> (``mast_unc_none``, 2); None for a name that is no study checkpoint."""
    arm, sep, seed = str(name).rpartition("_s")
    return (arm, int(seed)) if sep and arm in ARMS and seed.isascii() and seed.isdigit() and len(seed) < 12 else None


def study_results(results: Path) -> Results:
    """The study's records as one :class:`Results`: group = arm, seed = the record's ``pretrain_seed``.

    ``results``: one results.jsonl, or the folder holding one per checkpoint. Which record is shown
    per (arm, task, seed) is :func:`reports.results.select_records`, as in every report.
    """
    files = [results] if results.is_file() else sorted(results.rglob("results.jsonl"))

    def records():  # streamed: only the latest record per cell is kept (latest_records)
        for path in files:
            for record in iter_jsonl(path):
                found = arm_and_seed(record.get("name", ""))
                if found is None or not well_formed(record, path):
                    continue
                arm, name_seed = found
                seed = record.get("pretrain_seed")
                seed = name_seed if seed is None else int(seed)
                record = dict(record, name=arm, seed_index=seed, pretrain_seed=seed, checkpoint_name=record["name"])
                if record.get("predictions") and not Path(record["predictions"]).is_absolute():
                    record["predictions"] = str(path.parent / record["predictions"])  # each file has its own root
                yield record

    latest, first = latest_records(records())
    out = results_from_records(latest, None, first)
    out.names = [a for a in ARMS if a in out.names]
    return out


def seed_values(results: Results, arm: str, task: str, metric: str) -> dict[int, float]:
    """pretrain_seed -> the metric of that seed's shown record (ok records only)."""
    return {int(r["pretrain_seed"]): v for r in results.seeds(arm, task) if r.get("status") == "ok"
            and (v := finite((r.get("metrics") or {}).get(metric))) is not None}


def differences(results: Results, control: str) -> dict[str, Delta]:
    """label -> MAST − ``control`` per headline metric (reports.compare.delta; absent when a side has no value)."""
    return {label: d for task, metric, label in TASKS
            if (d := compare.delta(results, "mast", control, task, metric)) is not None}


def verdict(label: str, control: str, d: Delta) -> str:
    """One generated sentence: does the interval of MAST − control exclude 0?"""
    if d.lo is None:
        return f"{label}: MAST − {control} = {fmt(d.value, True)} points; no interval (records without per-item scores)."
    seeds = f"over {d.n_seeds} paired seeds" if d.paired_seeds else f"over {d.n_seeds} seed(s), not paired"
    span = f"{fmt(d.value, True)} points, 95% CI {fmt_interval(d.lo, d.hi, True)} {seeds}"
    if d.marked:
        side = "higher" if d.lo > 0 else "lower"
        return f"{label}: MAST is {side} than {control} ({span}); the interval excludes 0."
    return f"{label}: no distinguishable difference between MAST and {control} ({span}); the interval includes 0."


def confound_line(results: Results, runs: dict[str, dict]) -> str | None:
    """Why a MAST arm without its matched-λ control cannot be read against VICReg (one generated sentence)."""
    w = {}
    for arm in results.names:
        values = [f["w_mean_train"] for n, f in runs.items() if (arm_and_seed(n) or ("",))[0] == arm
                  and f.get("w_mean_train") is not None]
        if values:
            w[arm] = (sum(values) / len(values), len(values))
    lines = []
    for arm in (a for a in w if a != "mast" and MATCHED.get(a) not in results.names):
        (w_arm, n_arm), (w_mast, n_mast) = w[arm], w.get("mast", (None, 0))
        than_mast = f" against MAST's {w_mast:.2f} ({n_mast} runs)" if w_mast is not None else ""
        lines.append(f"{ARM_LABELS[arm]} applied a mean invariance weight w of {w_arm:.2f} over its last epoch "
                     f"({n_arm} runs){than_mast}, while VICReg's w is 1 at the same λ, and no VICReg run with λ "
                     f"matched to its w was made: its comparisons with VICReg and with MAST are confounded, since "
                     f"they mix the effect of the uncertainty heads with a different strength of the invariance term.")
    return " ".join(lines) or None


def summary_lines(results: Results, runs: dict[str, dict]) -> list[str]:
    """The generated summary: per control, the tasks by verdict, then one sentence per task."""
    lines = []
    for control in CONTROLS:
        diffs = differences(results, control)
        if not diffs:
            continue
        groups = {"higher": [k for k, d in diffs.items() if d.marked and d.value > 0],
                  "lower": [k for k, d in diffs.items() if d.marked and d.value < 0],
                  "no distinguishable difference": [k for k, d in diffs.items() if not d.marked]}
        n = max(d.n_seeds for d in diffs.values())
        lead = "; ".join(f"{g} on {', '.join(ks)}" for g, ks in groups.items() if ks)
        paired = "paired " if any(d.paired_seeds for d in diffs.values()) else ""
        lines += [f"**MAST − {ARM_LABELS[control]}** (95% intervals over {n} {paired}seed(s)): {lead}.", ""]
        lines += [f"- {verdict(label, ARM_LABELS[control], d)}" for label, d in diffs.items()] + [""]
    confound = confound_line(results, runs)
    return lines + ([f"Reading the ablation: {confound}", ""] if confound else [])


def head_lines(results: Results) -> list[str]:
    checkpoints = {(a, s) for (a, _), recs in results.runs.items() for s in (r["pretrain_seed"] for r in recs)}
    seeds = sorted({s for _, s in checkpoints})
    n_records = sum(len(recs) for recs in results.runs.values())
    return [f"Generated by `python -m reports.study_report` from {n_records} probe records of {len(checkpoints)} "
            f"checkpoints ({len(seeds)} pretraining seed(s): {', '.join(map(str, seeds))}). Each sentence compares "
            "MAST (eq. 4 v2) with one control on one task by the 95% hierarchical bootstrap interval of the "
            "difference (pretraining seeds, then test items; paired by test item and by pretraining seed; "
            "docs/STATISTICS.md); † in the tables marks an interval that excludes 0.", ""]


def arms_table(results: Results) -> list[str]:
    out = ["| task | " + " | ".join(ARM_LABELS[a] for a in results.names) + " |",
           "|---|" + "---:|" * len(results.names)]
    for task, metric, label in TASKS:
        cells = [format_cell(Cell(compare.group_stat(results, a, task, metric))) for a in results.names]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def differences_table(results: Results) -> list[str]:
    out = ["| task | " + " | ".join(f"MAST − {ARM_LABELS[c]}" for c in CONTROLS) + " |", "|---|" + "---:|" * len(CONTROLS)]
    for task, metric, label in TASKS:
        cells = [format_delta(d) if (d := compare.delta(results, "mast", c, task, metric)) else "–" for c in CONTROLS]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def seed_table(results: Results) -> list[str]:
    seeds = sorted({r["pretrain_seed"] for recs in results.runs.values() for r in recs})
    out = ["| task | arm | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|---|" + "---:|" * len(seeds)]
    for task, metric, label in TASKS:
        for arm in results.names:
            values = seed_values(results, arm, task, metric)
            if values:
                out.append(f"| {label} | {ARM_LABELS[arm]} | " + " | ".join(
                    "–" if s not in values else f"{values[s]:.1f}" for s in seeds) + " |")
    return out + [""]


def _csv(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else v) for k, v in r.items()}
                      for r in rows])
    return buf.getvalue()


def write_csvs(results: Results, runs: dict[str, dict], out: Path) -> None:
    per_seed, arms, diffs = [], [], []
    for task, metric, _ in TASKS:
        for arm in results.names:
            per_seed += [{"task": task, "metric": metric, "arm": arm, "seed": s, "value": v}
                         for s, v in sorted(seed_values(results, arm, task, metric).items())]
            if (s := compare.group_stat(results, arm, task, metric)) is not None:
                arms.append({"task": task, "metric": metric, "arm": arm, "n_seeds": s.n_seeds, "mean": s.value,
                             "lo": s.lo, "hi": s.hi})
        for control in CONTROLS:
            if (d := compare.delta(results, "mast", control, task, metric)) is not None:
                diffs.append({"task": task, "metric": metric, "comparison": f"mast-{control}", "n_seeds": d.n_seeds,
                              "paired_seeds": d.paired_seeds, "delta": d.value, "delta_lo": d.lo, "delta_hi": d.hi,
                              "excludes_zero": d.marked})
    learned = study_runs.learned_rows(runs)
    write_text_atomic(out / "results.csv", _csv(per_seed, ["task", "metric", "arm", "seed", "value"]))
    write_text_atomic(out / "arms.csv", _csv(arms, ["task", "metric", "arm", "n_seeds", "mean", "lo", "hi"]))
    write_text_atomic(out / "differences.csv", _csv(diffs, ["task", "metric", "comparison", "n_seeds", "paired_seeds",
                                                             "delta", "delta_lo", "delta_hi", "excludes_zero"]))
    write_text_atomic(out / "learned.csv", _csv(learned, ["run", "augmentation", "u_bar", "mask_logit_std",
                                                           "subspace_size", "rho_u_delta", "mask_differentiation",
                                                           "w_mean_train",
                                                           "w_mean_heldout"]))


def plot_differences(results: Results, path: Path) -> str:
    """Forest plot: MAST minus each control per task with its 95% interval."""
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(TASKS) + 1.2))
    colors = {"vicreg": "tab:blue", "vicreg_matched": "tab:green", "mast_unc_none": "tab:purple"}
    for j, control in enumerate(CONTROLS):
        for i, (task, metric, _) in enumerate(TASKS):
            d = compare.delta(results, "mast", control, task, metric)
            if d is None:
                continue
            err = None if d.lo is None else [[d.value - d.lo], [d.hi - d.value]]
            ax.errorbar(d.value, i + (j - 1) * 0.22, xerr=err, fmt="o", color=colors[control], ms=4, capsize=3,
                        label=f"MAST − {ARM_LABELS[control]}" if i == 0 else None)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(TASKS)), [label for _, _, label in TASKS])
    ax.invert_yaxis()
    ax.set_xlabel("difference in accuracy (points); 95% hierarchical bootstrap interval")
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path).name


def plot_arms(results: Results, path: Path) -> str:
    """Per task: every arm's per-seed values (dots) and its mean with the 95% interval."""
    cols = 4
    fig, axes = plt.subplots(-(-len(TASKS) // cols), cols, figsize=(13, 5.6), squeeze=False)
    for ax, (task, metric, label) in zip(axes.flat, TASKS):
        for i, arm in enumerate(results.names):
            s = compare.group_stat(results, arm, task, metric)
            if s is None:
                continue
            ax.scatter([i] * s.n_seeds, s.per_seed, s=10, color="gray", zorder=3)
            err = None if s.lo is None else [[s.value - s.lo], [s.hi - s.value]]
            ax.errorbar(i + 0.15, s.value, yerr=err, fmt="s", color="tab:red" if arm == "mast" else "tab:blue",
                        ms=4, capsize=3)
        ax.set_xticks(range(len(results.names)), [ARM_LABELS[a].replace(" (", "\n(") for a in results.names], fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("accuracy (%)", fontsize=8)
    for ax in list(axes.flat)[len(TASKS):]:
        ax.axis("off")
    return save_figure(fig, path).name


def write_report(results_path: Path, runs_root: Path, out: Path) -> list[str]:
    """Build every file of the report; returns the generated summary lines."""
    results = study_results(results_path)
    names = sorted({(r["pretrain_seed"], ARMS.index(a), r["checkpoint_name"]) for (a, _), recs in results.runs.items()
                    for r in recs})
    runs = {n: f for _, _, n in names if (f := study_runs.run_facts(runs_root / f"study_{n}"))["config"]}
    out.mkdir(parents=True, exist_ok=True)
    write_csvs(results, runs, out)
    fig_diff, fig_arms = plot_differences(results, out / "differences.png"), plot_arms(results, out / "arms.png")
    head, summary = head_lines(results), summary_lines(results, runs)
    write_text_atomic(out / "summary.md", "\n".join(head + summary) + "\n")
    lam = [f"{n}: λ = {f['config'].get('loss', {}).get('inv_coeff', float('nan')):.2f}"
           for n, f in runs.items() if n.startswith("vicreg_matched")]
    text = [
        "# MAST v2 study: MAST against VICReg and two controls, over pretraining seeds", "",
        f"How this was made: `make study` (`python -m transfer.orchestrate.study`), report rebuilt with `python -m "
        f"reports.study_report --results {results_path} --runs {runs_root} --out {out}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; report code {code_version()}.", "",
        study_runs.settings_line(runs) + " Arms: VICReg (λ = 25); VICReg with λ matched to the same-seed MAST run's "
        "mean invariance weight (λ = 25 × mean w over its last epoch; " + ("; ".join(lam) or "none") + "); MAST with "
        "`model.uncertainty=none`; MAST. Probes: transfer/suites/study.yaml. All numbers are accuracies in percent.", "",
        "## Summary (generated)", "", *head, *summary,
        "## Per arm: mean over seeds [95% interval]", "",
        "`sd`: the spread over pretraining seeds. The intervals resample pretraining seeds, then test items "
        "(docs/STATISTICS.md).", "", *arms_table(results), "",
        "## MAST minus each control [95% interval]", "", *differences_table(results), "",
        f"![MAST minus each control]({fig_diff})", "", f"![every arm, every seed]({fig_arms})", "",
        "## Per seed", "", *seed_table(results),
        "## What MAST learned, per run (METHOD.md eq. 1', §5)", "", *study_runs.learned_tables(runs),
        "Files: [summary.md](summary.md), [results.csv](results.csv) (per seed), [arms.csv](arms.csv), "
        "[differences.csv](differences.csv) (`delta`, `delta_lo`, `delta_hi`, `n_seeds`), [learned.csv](learned.csv).", ""]
    write_text_atomic(out / "index.md", "\n".join(text))
    return head + summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.study_report", description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("runs/study/transfer"),
                   help="a results.jsonl, or the folder holding one per run (the study's --out)")
    p.add_argument("--runs", type=Path, default=Path("runs/study/pretrain"), help="the study's pretraining runs")
    p.add_argument("--out", type=Path, default=Path("reports/study"))
    args = p.parse_args(argv)
    if not args.runs.is_dir():  # e.g. /etc/passwd: run folders are looked up under it
        print(f"error: --runs {args.runs}: not a folder (expected the study's pretraining runs, "
              "RUNS/study_<arm>_s<seed>/)", file=sys.stderr)
        return 2
    if not (args.results.is_file() or any(args.results.rglob("results.jsonl"))):
        print(f"error: --results {args.results}: no results.jsonl there (run python -m transfer.orchestrate.study "
              "first)", file=sys.stderr)
        return 2
    try:
        lines = write_report(args.results, args.runs, args.out)
    except (ValueError, OSError) as e:  # a damaged input: one line naming it
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    print(f"report: {args.out / 'index.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
