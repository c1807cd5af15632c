"""Paper-style tables: checkpoint groups as rows, task metrics as columns (Markdown, LaTeX, tidy CSV).

A cell shows ``mean [95 % interval] (Δ [interval])`` (reports/compare.py, docs/STATISTICS.md):
the value is the mean over the group's pretraining seeds, ``sd`` their spread when there are
several; Δ is the difference to the baseline row, marked † when its interval excludes 0. A
fine-tuning number without per-item scores shows ``± std (n runs)`` or ``(1 run)``. The best value
of each column is bold. Every metric is "higher is better". Markdown, LaTeX and CSV print the
same numbers from the same :class:`Cell`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd

from reports import compare
from reports.compare import Delta, Stat
from reports.results import Results, headline_metric, metric_names, task_label


@dataclass(frozen=True)
class Cell:
    stat: Stat | None = None
    delta: Delta | None = None
    best: bool = False
    note: str = "–"  # shown when there is no value: failed / skipped / – (not run)
    group_seeds: int = 0  # a group row: the group's pretraining seeds (a task may have run on fewer)

    @property
    def value(self) -> float | None:
        return self.stat.value if self.stat else None


@dataclass
class Table:
    title: str
    columns: list[tuple[str, str]]  # (task name, metric)
    rows: list[str]  # row labels: a group, or "<group> s<i>" for one of its seeds
    cells: dict[tuple[str, int], Cell]

    def header(self, i: int, with_task: bool) -> str:
        task, metric = self.columns[i]
        return f"{task} {metric}" if with_task else metric


def ordered_names(results: Results, baseline: str | None) -> list[str]:
    """Checkpoint groups: the baseline first, then first-seen order."""
    if baseline is not None and baseline not in results.names:
        raise ValueError(f"--baseline {baseline}: no records for it (checkpoints: {results.names})")
    return ([baseline] if baseline else []) + [n for n in results.names if n != baseline]


def group_label(results: Results, name: str) -> str:
    n = results.n_seeds(name)
    return f"{name} ({n} seeds)" if n > 1 else name


def seed_label(name: str, index: int) -> str:
    return f"{name} s{index}"


def build_table(results: Results, columns: list[tuple[str, str]], baseline: str | None, title: str,
                with_seeds: bool = False) -> Table:
    """One row per group (and, ``with_seeds``, one per seed of a group that has several)."""
    rows, cells = [], {}
    for name in ordered_names(results, baseline):
        label = group_label(results, name)
        rows.append(label)
        for i, (task, metric) in enumerate(columns):
            stat = compare.group_stat(results, name, task, metric)
            d = compare.delta(results, name, baseline, task, metric) if baseline else None
            cells[(label, i)] = Cell(stat, d, note=_note(results.get(name, task)), group_seeds=results.n_seeds(name))
        seeds = max((len(results.seeds(name, t)) for t, _ in columns), default=0)
        for s in range(seeds if with_seeds and results.n_seeds(name) > 1 else 0):
            rows.append(seed_label(name, s))
            for i, (task, metric) in enumerate(columns):
                runs = results.seeds(name, task)
                record = runs[s] if s < len(runs) else None
                stat = compare.seed_stat(results, record, metric) if record else None
                cells[(rows[-1], i)] = Cell(stat, note=_note(record))
    for i in range(len(columns)):
        groups = [group_label(results, n) for n in ordered_names(results, baseline)]
        shown = [round(cells[(g, i)].value, 1) for g in groups if cells[(g, i)].value is not None]
        top = max(shown) if len(shown) > 1 else None
        if top is not None and shown.count(top) == len(shown):  # all tied (e.g. every one 0.0): no best
            top = None
        for g in groups:
            c = cells[(g, i)]
            if c.value is not None and round(c.value, 1) == top:
                cells[(g, i)] = replace(c, best=True)
    return Table(title, columns, rows, cells)


def _note(record: dict | None) -> str:
    if record is None:
        return "–"
    return "–" if record.get("status") == "ok" else str(record.get("status") or "failed")


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
TEX = Style((r"\textbf{", "}"), r" $\pm$ ", (r" {\scriptsize (", ")}"), r"$^\dagger$")


def fmt(x: float, signed: bool = False) -> str:
    """One decimal, never "-0.0" (a difference of -0.004 is shown as +0.0)."""
    x = round(x, 1) + 0.0
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def fmt_interval(lo: float, hi: float, signed: bool = False) -> str:
    return f"[{fmt(lo, signed)}, {fmt(hi, signed)}]"


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


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_latex(table: Table, with_task: bool = False) -> str:
    """A booktabs table; one row per group (and per seed in the per-task tables)."""
    head = ["Checkpoint"] + [tex_escape(table.header(i, with_task)) for i in range(len(table.columns))]
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_escape(table.title)}}}",
             r"\begin{tabular}{l" + "c" * len(table.columns) + "}", r"\toprule", " & ".join(head) + r" \\",
             r"\midrule"]
    for row in table.rows:
        cells = [_tex_cell(table.cells[(row, i)]) for i in range(len(table.columns))]
        lines.append(" & ".join([tex_escape(row)] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def _tex_cell(cell: Cell) -> str:
    if cell.stat is None:
        return "--" if cell.note == "–" else tex_escape(cell.note)
    return format_cell(cell, TEX)


def seeds_note(results: Results) -> str:
    """How many pretraining seeds each group has; "1 seed" says the intervals cover the test set only."""
    counts = {n: results.n_seeds(n) for n in results.names}
    if all(c <= 1 for c in counts.values()):
        return ("1 seed per checkpoint: intervals cover test-set sampling only, not the variation between "
                "pretraining seeds (there is no seed spread to show).")
    return "Pretraining seeds: " + ", ".join(f"{n} {c} seed{'s' if c != 1 else ''}" for n, c in counts.items()) + (
        "; a group's value is the mean over its seeds, `sd` their spread, and its interval resamples seeds, "
        "then test items (docs/STATISTICS.md).")


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
    from reports import families, family_render  # they build on this module's cells

    fams = families.family_tables(results, baseline, families.load_references())
    parts = ["# Results", "", seeds_note(results), "", *([backbones_note(results), ""] if has_vit(results) else []),
             "## Summary: one headline per family", "", family_render.summary(fams, results, baseline)]
    for ft in fams:
        parts += ["", f"## {family_render.title(ft)}", "", family_render.to_markdown(ft, results, baseline)]
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
    from reports import families, family_render

    parts = [f"% generated by reports.build; baseline: {tex_escape(baseline or 'none')}; needs \\usepackage{{booktabs}}",
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
