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

from plumbing.atomic import write_text_atomic  # noqa: E402
from plumbing.provenance import code_version  # noqa: E402
from reports import compare, study_runs  # noqa: E402
from reports.compare import Delta  # noqa: E402
from reports.plots import save_figure  # noqa: E402
from reports.results import Results, well_formed, finite, latest_records, results_from_records  # noqa: E402
from reports.tables import Cell, fmt, fmt_interval, format_cell, format_delta  # noqa: E402
from transfer.records import iter_jsonl  # noqa: E402

ARMS = ("vicreg", "vicreg_matched", "mast_unc_none", "mast", "mast_tied", "vicreg_matched_tied", "vicreg_matched_unc_none")
ARM_LABELS = {"vicreg": "VICReg", "vicreg_matched": "VICReg (matched λ)", "mast_unc_none": "MAST (uncertainty: none)",
              "mast": "MAST", "mast_tied": "MAST (tied masks)", "vicreg_matched_tied": "VICReg (λ matched to tied)",
              "vicreg_matched_unc_none": "VICReg (λ matched to uncertainty: none)"}
#: a MAST-type arm -> the VICReg arm whose λ matches its own w_eff (mast/matched.py)
MATCHED = {"mast": "vicreg_matched", "mast_tied": "vicreg_matched_tied", "mast_unc_none": "vicreg_matched_unc_none"}
#: (A, B): A minus B per headline metric, paired by test item and pretraining seed
COMPARISONS = (("mast", "vicreg"), ("mast", "vicreg_matched"), ("mast", "mast_unc_none"), ("mast", "mast_tied"),
               ("mast_tied", "vicreg_matched_tied"), ("mast_unc_none", "vicreg_matched_unc_none"))
CONTROLS = tuple(b for a, b in COMPARISONS if a == "mast")
#: (task name in the suite, metric, label): the headline metrics, in the order the summary reads them
TASKS = (("knn_color", "top1_k20", "kNN color"), ("linear_color", "top1", "linear color"),
         ("knn_side", "top1_k20", "kNN side"), ("linear_side", "top1", "linear side"),
         ("fewshot_shape_color", "acc_5way_1shot", "few-shot 5-way 1-shot"),
         ("fewshot_shape_color", "acc_5way_5shot", "few-shot 5-way 5-shot"),
         ("knn_shape", "top1_k20", "kNN shape"), ("linear_shape", "top1", "linear shape"))


STYLE = ("linear color", "linear side")  # the augmentation-sensitive properties (colour jitter, flip), linear probes
CONTENT = ("few-shot 5-way 5-shot", "linear shape")
#: Stated before the issue-35 study rerun: one verdict per claim, read from the intervals of paired differences.
VERDICTS = {
    "a": ("(a) per-dimension relief adds to per-augmentation relief", [("mast", "mast_tied")],
          "MAST − MAST (tied masks) is above 0 on linear color or linear side and below 0 on no headline metric"),
    "b": ("(b) per-pair δ weighting adds to uniform relief", [("mast_tied", "vicreg_matched_tied")],
          "MAST (tied masks) − its own matched-λ VICReg is above 0 on linear color or linear side and below 0 on no "
          "headline metric"),
    "c": ("(c) both at no content cost", [("mast", "mast_tied"), ("mast_tied", "vicreg_matched_tied")],
          "neither comparison's interval is entirely below 0 on few-shot 5-way 5-shot or linear shape"),
}


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


def differences(results: Results, control: str, arm: str = "mast") -> dict[str, Delta]:
    """label -> ``arm`` − ``control`` per headline metric (reports.compare.delta; absent when a side has no value)."""
    return {label: d for task, metric, label in TASKS
            if (d := compare.delta(results, arm, control, task, metric)) is not None}


def verdict(label: str, control: str, d: Delta, arm: str = "MAST") -> str:
    """One generated sentence: does the interval of ``arm`` − control exclude 0?"""
    if d.lo is None:
        return f"{label}: {arm} − {control} = {fmt(d.value, True)} points; no interval (records without per-item scores)."
    seeds = f"over {d.n_seeds} paired seeds" if d.paired_seeds else f"over {d.n_seeds} seed(s), not paired"
    span = f"{fmt(d.value, True)} points, 95% CI {fmt_interval(d.lo, d.hi, True)} {seeds}"
    if d.marked:
        side = "higher" if d.lo > 0 else "lower"
        return f"{label}: {arm} is {side} than {control} ({span}); the interval excludes 0."
    return f"{label}: no distinguishable difference between {arm} and {control} ({span}); the interval includes 0."


def claim_verdicts(results: Results) -> dict[str, bool | None]:
    """VERDICTS, each True / False / None (an arm it needs has no records)."""
    out: dict[str, bool | None] = {}
    for key, (_, pairs, _) in VERDICTS.items():
        diffs = [differences(results, b, a) for a, b in pairs]
        if any(not d for d in diffs):
            out[key] = None
        elif key == "c":
            read = [d[m] for d in diffs for m in CONTENT if m in d]
            out[key] = None if not read else not any(x.marked and x.value < 0 for x in read)
        else:
            d = diffs[0]
            up = any(d[m].marked and d[m].value > 0 for m in STYLE if m in d)
            out[key] = None if not any(m in d for m in STYLE) else up and not any(x.marked and x.value < 0
                                                                                 for x in d.values())
    return out


def verdict_evidence(results: Results, key: str) -> str:
    """The differences a verdict reads: (c) the content probes of each pair; (a), (b) the style probes and any
    headline metric whose interval is entirely below 0."""
    parts = []
    for a, b in VERDICTS[key][1]:
        diffs = differences(results, b, a)
        read = [m for m in diffs if (m in CONTENT if key == "c" else
                                     m in STYLE or (diffs[m].marked and diffs[m].value < 0))]
        cells = [f"{m} {fmt(diffs[m].value, True)} {fmt_interval(diffs[m].lo, diffs[m].hi, True)}"
                 if diffs[m].lo is not None else f"{m} {fmt(diffs[m].value, True)}" for m in read]
        if cells:
            parts.append(f"{ARM_LABELS[a]} − {ARM_LABELS[b]}: " + ", ".join(cells))
    return "; ".join(parts)


def verdict_lines(results: Results) -> list[str]:
    """One generated sentence per claim (VERDICTS), with the differences it read (points, 95% intervals)."""
    state = {True: "**holds**", False: "**does not hold**", None: "not measured (an arm or a probe it reads has no records)"}
    res = claim_verdicts(results)
    lines = []
    for key, (title, _, rule) in VERDICTS.items():
        evidence = verdict_evidence(results, key) if res[key] is not None else ""
        lines.append(f"- {title}: {state[res[key]]}" + (f" ({evidence} points)" if evidence else "")
                     + f"; rule, stated before the run: {rule}.")
    return lines + [""]


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
        lines.append(f"{ARM_LABELS[arm]} applied a mean invariance weight w of {w_arm:.2f} over its last steps "
                     f"({n_arm} runs){than_mast}, while VICReg's w is 1 at the same λ, and no VICReg run with λ "
                     f"matched to its w was made: its comparisons with VICReg and with MAST are confounded, since "
                     f"they mix the effect of the uncertainty heads with a different strength of the invariance term.")
    return " ".join(lines) or None


def summary_lines(results: Results, runs: dict[str, dict]) -> list[str]:
    """The generated summary: the claims' verdicts, then per comparison the tasks by verdict and one sentence per task."""
    lines = ["**Which part does the work** (issue 35):", "", *verdict_lines(results)]
    for arm, control in COMPARISONS:
        diffs = differences(results, control, arm)
        if not diffs:
            continue
        groups = {"higher": [k for k, d in diffs.items() if d.marked and d.value > 0],
                  "lower": [k for k, d in diffs.items() if d.marked and d.value < 0],
                  "no distinguishable difference": [k for k, d in diffs.items() if not d.marked]}
        n = max(d.n_seeds for d in diffs.values())
        lead = "; ".join(f"{g} on {', '.join(ks)}" for g, ks in groups.items() if ks)
        paired = "paired " if any(d.paired_seeds for d in diffs.values()) else ""
        lines += [f"**{ARM_LABELS[arm]} − {ARM_LABELS[control]}** (95% intervals over {n} {paired}seed(s)): {lead}.", ""]
        lines += [f"- {verdict(label, ARM_LABELS[control], d, ARM_LABELS[arm])}" for label, d in diffs.items()] + [""]
    confound = confound_line(results, runs)
    return lines + ([f"Reading the ablation: {confound}", ""] if confound else [])


def head_lines(results: Results) -> list[str]:
    checkpoints = {(a, s) for (a, _), recs in results.runs.items() for s in (r["pretrain_seed"] for r in recs)}
    seeds = sorted({s for _, s in checkpoints})
    n_records = sum(len(recs) for recs in results.runs.values())
    return [f"Generated by `python -m reports.study_report` from {n_records} probe records of {len(checkpoints)} "
            f"checkpoints ({len(seeds)} pretraining seed(s): {', '.join(map(str, seeds))}). Each sentence compares "
            "two arms (A − B) on one task by the 95% hierarchical bootstrap interval of the "
            "difference (pretraining seeds and test items; paired by test item and by pretraining seed; "
            "docs/STATISTICS.md); † in the tables marks an interval that excludes 0.", ""]


def arms_table(results: Results) -> list[str]:
    out = ["| task | " + " | ".join(ARM_LABELS[a] for a in results.names) + " |",
           "|---|" + "---:|" * len(results.names)]
    for task, metric, label in TASKS:
        cells = [format_cell(Cell(compare.group_stat(results, a, task, metric))) for a in results.names]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def differences_table(results: Results) -> list[str]:
    pairs = [(a, b) for a, b in COMPARISONS if a in results.names and b in results.names]
    out = ["| task | " + " | ".join(f"{ARM_LABELS[a]} − {ARM_LABELS[b]}" for a, b in pairs) + " |",
           "|---|" + "---:|" * len(pairs)]
    for task, metric, label in TASKS:
        cells = [format_delta(d) if (d := compare.delta(results, a, b, task, metric)) else "–" for a, b in pairs]
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
        for arm, control in COMPARISONS:
            if (d := compare.delta(results, arm, control, task, metric)) is not None:
                diffs.append({"task": task, "metric": metric, "comparison": f"{arm}-{control}", "n_seeds": d.n_seeds,
                              "paired_seeds": d.paired_seeds, "delta": d.value, "delta_lo": d.lo, "delta_hi": d.hi,
                              "excludes_zero": d.marked})
    learned = study_runs.learned_rows(runs)
    write_text_atomic(out / "results.csv", _csv(per_seed, ["task", "metric", "arm", "seed", "value"]))
    write_text_atomic(out / "arms.csv", _csv(arms, ["task", "metric", "arm", "n_seeds", "mean", "lo", "hi"]))
    write_text_atomic(out / "differences.csv", _csv(diffs, ["task", "metric", "comparison", "n_seeds", "paired_seeds",
                                                             "delta", "delta_lo", "delta_hi", "excludes_zero"]))
    write_text_atomic(out / "learned.csv", _csv(learned, ["run", "augmentation", "u_bar", "mask_logit_std",
                                                           "subspace_size", "rho_u_delta", "mask_differentiation",
                                                           "w_mean_train", "w_eff_train",
                                                           "w_mean_heldout"]))


def plot_differences(results: Results, path: Path) -> str:
    """Forest plot: each comparison (A − B) per task with its 95% interval."""
    pairs = [(a, b) for a, b in COMPARISONS if a in results.names and b in results.names]
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(TASKS) + 1.2))
    step = 0.8 / max(1, len(pairs))
    for j, (arm, control) in enumerate(pairs):
        label = f"{ARM_LABELS[arm]} − {ARM_LABELS[control]}"
        for i, (task, metric, _) in enumerate(TASKS):
            d = compare.delta(results, arm, control, task, metric)
            if d is None:
                continue
            err = None if d.lo is None else [[d.value - d.lo], [d.hi - d.value]]
            ax.errorbar(d.value, i + (j - (len(pairs) - 1) / 2) * step, xerr=err, fmt="o", color=f"C{j}", ms=4,
                        capsize=3, label=label)
            label = None  # one legend entry per comparison
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(TASKS)), [label for _, _, label in TASKS])
    ax.invert_yaxis()
    ax.set_xlabel("difference in accuracy (points); 95% hierarchical bootstrap interval")
    ax.legend(fontsize=6, loc="best")
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
        "# MAST v2 study: MAST against VICReg and the controls that isolate its parts, over pretraining seeds", "",
        f"How this was made: `make study` (`python -m transfer.orchestrate.study`), report rebuilt with `python -m "
        f"reports.study_report --results {results_path} --runs {runs_root} --out {out}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; report code {code_version()}.", "",
        study_runs.settings_line(runs) + " Arms: " + "; ".join(ARM_LABELS[a] for a in results.names) + ". Each "
        "matched VICReg has λ = 25 × w_eff (Σwr²/Σr², eq. 4) of its own MAST-type arm's same-seed run over the last "
        "max(50, one epoch) logged steps (mast/matched.py; " + ("; ".join(lam) or "none") + "). Tied masks: one "
        "relief weight per augmentation, the same uncertainty head (`model.masks=tied`). Probes: "
        "transfer/suites/study.yaml. All numbers are accuracies in percent.", "",
        "## Verdicts (stated in the code before the run; generated)", "", *verdict_lines(results),
        "## Summary (generated)", "", *head, *summary,
        "## Per arm: mean over seeds [95% interval]", "",
        "`sd`: the spread over pretraining seeds. The intervals resample pretraining seeds and test items, "
        "the same items for every seed (docs/STATISTICS.md).", "", *arms_table(results), "",
        "## Differences A − B [95% interval]", "", *differences_table(results), "",
        f"![differences A − B]({fig_diff})", "", f"![every arm, every seed]({fig_arms})", "",
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
