"""The report's tables: tables.md, tables.tex and the tidy results.csv.

tables.md starts with the summary (one headline per task family) and one table per family in the
papers' shape (reports/families.py, printed by reports/family_render.py: ``72.3±0.4``), then gives
one table per task with every metric, the full interval and every seed. A per-task cell shows
``mean [95 % interval] (Δ [interval])`` (reports/compare.py, docs/STATISTICS.md): the value is the
mean over the group's pretraining seeds, ``sd`` their spread when there are several; Δ is the
difference to the baseline row, marked † when its interval excludes 0. A fine-tuning number without
per-item scores shows ``± std (n runs)`` or ``(1 run)``. The best value of each column is bold.
Every metric is "higher is better". tables.tex holds the family tables (booktabs). Markdown, LaTeX
and CSV print the same numbers from the same :class:`reports.cells.Cell`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reports import compare, families, family_render
from reports.compare import Delta, Stat
from reports.cells import (Cell, Table, build_table, fmt, fmt_interval, group_label, ordered_names,  # noqa: F401
                           seed_label, tex_escape)
from reports.results import Results, headline_metric, metric_names, task_label


def summary_table(results: Results, baseline: str | None) -> Table:
    columns = [(t, m) for t in results.tasks if (m := headline_metric(results, t))]
    return build_table(results, columns, baseline, "Summary: one headline metric per task")


def task_tables(results: Results, baseline: str | None) -> list[Table]:
    """One table per task; with ViTs among the checkpoints each title says the backbones it holds."""
    vit = has_vit(results)
    return [build_table(results, [(t, m) for m in metric_names(results, t)], baseline,
                        task_label(results, t) + (f" · backbone: {', '.join(backbones(results, t))}" if vit else ""),
                        True)
            for t in results.tasks if metric_names(results, t)]


def _checkpoint(record: dict) -> dict:
    return record.get("checkpoint") if isinstance(record.get("checkpoint"), dict) else {}


def backbones(results: Results, task: str | None = None) -> list[str]:
    """The architectures (``resnet50``, ``vit_small_patch16``...) of the records of ``task`` (all: None)."""
    archs = [_checkpoint(r).get("arch") for (_, t), r in results.records.items() if task in (None, t)]
    return list(dict.fromkeys(a for a in archs if a))


def has_vit(results: Results) -> bool:
    return any(_checkpoint(r).get("family") == "vit" for r in results.records.values())


def backbones_note(results: Results) -> str:
    """Which backbone each checkpoint group is, when ResNets and ViTs share a report ("" otherwise)."""
    if not has_vit(results):
        return ""
    arch = {}
    for (name, _), r in results.records.items():
        c = _checkpoint(r)
        if c.get("arch") and name not in arch:
            arch[name] = c["arch"] + (f" ({c['codebase']})" if c.get("family") == "vit" and c.get("codebase") else "")
    return ("Backbones: " + "; ".join(f"{n} {a}" for n, a in arch.items()) + ". ResNets and ViTs are fine-tuned "
            "with different protocols (ViT tasks end in `_vit` or `_vitdet`: UperNet/ViTDet recipes) and probed on "
            "different features (docs/VIT.md): compare numbers within one backbone family only.")


@dataclass(frozen=True)
class Style:
    bold: tuple[str, str]
    pm: str
    delta: tuple[str, str]
    dagger: str


MD = Style(("**", "**"), " ± ", (" (", ")"), "†")


def format_cell(cell: Cell, style: Style = MD) -> str:
    """``value [lo, hi] sd S (Δ [lo, hi]†)``; see the module docstring."""
    s = cell.stat
    if s is None:
        return cell.note
    text = f"{s.value:.1f}"
    if cell.best:
        text = f"{style.bold[0]}{text}{style.bold[1]}"
    fewer = f"{s.n_seeds} of {cell.group_seeds} seeds" if cell.group_seeds > s.n_seeds else ""
    if s.lo is None and s.n_seeds <= 1:  # a fine-tuning number: its runs (and, in a group row, its seeds)
        runs = f"{s.n_runs} runs" if s.std is not None and s.n_runs > 1 else "1 run"
        text += (f"{style.pm}{s.std:.1f}" if runs != "1 run" else "") + f" ({', '.join(filter(None, (runs, fewer)))})"
        fewer = ""
    elif s.lo is not None:
        text += " " + fmt_interval(s.lo, s.hi)
    if s.seed_sd is not None:
        text += f" sd {s.seed_sd:.1f}"
    if fewer:
        text += f" ({fewer})"
    if cell.delta is not None:
        text += f"{style.delta[0]}{format_delta(cell.delta, style)}{style.delta[1]}"
    return text


def format_delta(d: Delta, style: Style = MD) -> str:
    """``+1.2 [+0.3, +2.1]†``: a difference, its interval when it has one, † when that excludes 0."""
    inner = fmt(d.value, True) + (" " + fmt_interval(d.lo, d.hi, True) if d.lo is not None else "")
    return inner + (style.dagger if d.marked else "")


def to_markdown(table: Table, with_task: bool = False) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    head = ["checkpoint"] + [esc(table.header(i, with_task)) for i in range(len(table.columns))]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + [":---:"] * len(table.columns)) + "|"]
    for row in table.rows:
        cells = [format_cell(table.cells[(row, i)]) for i in range(len(table.columns))]
        lines.append("| " + " | ".join([esc(row)] + cells) + " |")
    return "\n".join(lines)


def seeds_note(results: Results) -> str:
    """How many pretraining seeds each group has; "1 seed" says the intervals cover the test set only."""
    counts = {n: results.n_seeds(n) for n in results.names}
    if all(c <= 1 for c in counts.values()):
        return ("1 seed per checkpoint: intervals cover test-set sampling only, not the variation between "
                "pretraining seeds (there is no seed spread to show).")
    return "Pretraining seeds: " + ", ".join(f"{n} {c} seed{'s' if c != 1 else ''}" for n, c in counts.items()) + (
        "; a group's value is the mean over its seeds, `sd` their spread, and its interval resamples seeds "
        "and test items, the same items for every seed (docs/STATISTICS.md).")


def legend(baseline: str | None) -> str:
    return ((f"Δ in parentheses: difference to **{baseline}** with its 95% interval (items paired; seeds paired "
             "when both groups used the same seeds for pretraining); † marks an interval that excludes 0. " if baseline else "")
            + "[lo, hi]: 95% percentile-bootstrap interval over test images (probes) or episodes (few-shot). "
            "± (n runs): std over fine-tuning runs; (1 run): a single run, no interval; k of n seeds: the task ran "
            "on k of the group's n pretraining seeds. Bold: best in column. "
            "All numbers in percent.")


def markdown_report(results: Results, baseline: str | None) -> str:
    """tables.md: the summary (one headline per family), one table per family in the papers' shape
    (reports/family_render.py), then one table per task with all its metrics, full intervals and every seed."""
    fams = families.family_tables(results, baseline, families.load_references())
    parts = ["# Results", "", seeds_note(results), "", *([backbones_note(results), ""] if has_vit(results) else []),
             "## Summary: one headline per family", "", family_render.summary(fams, results, baseline)]
    vit = has_vit(results)
    for ft in fams:
        archs = dict.fromkeys(a for c in ft.columns for a in backbones(results, c.task)) if vit else {}
        parts += ["", f"## {family_render.title(ft)}" + (f" · backbone: {', '.join(archs)}" if vit else ""), "",
                  family_render.to_markdown(ft, results, baseline)]
    parts += ["", "## Per-task tables: every metric, full intervals, every seed", "", legend(baseline)]
    for table in task_tables(results, baseline):
        parts += ["", f"## {table.title}", "", to_markdown(table)]
    empty = [t for t in results.tasks if not metric_names(results, t)]
    if empty:
        why = {t: sorted({str(r.get("status")) for (n, tt), r in results.records.items() if tt == t}) for t in empty}
        parts += ["", "No result yet for: " + ", ".join(f"{t} ({'/'.join(why[t])})" for t in empty) + "."]
    return "\n".join(parts) + "\n"


def latex_report(results: Results, baseline: str | None) -> str:
    """tables.tex: one booktabs table per family, ready to paste (needs \\usepackage{booktabs})."""
    parts = [f"% generated by reports.build; baseline: {tex_escape(baseline or 'none')}; needs \\usepackage{{booktabs}} "
             "and, for tables of 7+ columns (\\resizebox), \\usepackage{graphicx}",
             "% " + seeds_note(results), *(["% " + backbones_note(results).replace("`", "")] if has_vit(results) else [])]
    parts += [family_render.to_latex(ft, results, baseline)
              for ft in families.family_tables(results, baseline, families.load_references())]
    return "\n\n".join(parts) + "\n"


def method_label(record: dict, name: str) -> str:
    """The method a checkpoint is listed under: the pretraining method its record names, else the
    codebase that wrote the file (``DINO``, ``solo-learn``, ``torchvision state_dict``), else its group
    name; never "?"."""
    ck = _checkpoint(record)
    return str(record.get("method") or ck.get("method") or ck.get("codebase") or ck.get("source_format") or name)


def tidy_frame(results: Results, baseline: str | None) -> pd.DataFrame:
    """One row per (group, task, metric), plus one per seed when a group has several; a failed or
    skipped task is one row with its status. The group row carries delta, delta_lo, delta_hi."""
    rows = []
    for (name, task), rep in results.records.items():
        runs = results.seeds(name, task)
        common = {"checkpoint": name, "task": task, "task_type": rep.get("task"), "dataset": rep.get("dataset"),
                  "scale": rep.get("scale"), "method": rep.get("method"), "n_seeds": len(runs)}
        metrics = [m for m in metric_names(results, task) if any(m in (r.get("metrics") or {}) for r in runs
                                                                  if r.get("status") == "ok")]
        if not metrics:
            rows.append({**common, **_record_cols(rep), "seed": 0, "metric": None})
        for metric in metrics:
            stat = compare.group_stat(results, name, task, metric)
            d = compare.delta(results, name, baseline, task, metric) if baseline else None
            group = {"seed": "all" if len(runs) > 1 else 0, "metric": metric, **_stat_cols(stat),
                     "delta": d.value if d else None, "delta_lo": d.lo if d else None,
                     "delta_hi": d.hi if d else None, "distinguishable": d.marked if d and d.lo is not None else None}
            where = _record_cols(runs[0])
            if len(runs) > 1:  # the group row stands for every seed's checkpoint
                where.update(ckpt_sha256=";".join(str(_record_cols(r)["ckpt_sha256"]) for r in runs), predictions=None)
            rows.append({**common, **where, **group})
            for i, record in enumerate(runs if len(runs) > 1 else []):
                rows.append({**common, **_record_cols(record), "seed": i, "metric": metric,
                             **_stat_cols(compare.seed_stat(results, record, metric))})
    return pd.DataFrame(rows)


def _record_cols(r: dict) -> dict:
    return {"status": r.get("status"), "ckpt_sha256": (r.get("checkpoint") or {}).get("sha256") or r.get("ckpt_sha256"),
            "code_version": r.get("code_version"), "end": r.get("end"), "error": r.get("error"),
            "predictions": r.get("predictions")}


def _stat_cols(s: Stat | None) -> dict:
    if s is None:
        return {"value": None, "lo": None, "hi": None, "std": None, "seed_sd": None, "n_runs": None}
    return {"value": s.value, "lo": s.lo, "hi": s.hi, "std": s.std, "seed_sd": s.seed_sd, "n_runs": s.n_runs}
