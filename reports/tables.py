"""Paper-style tables: checkpoints as rows, task metrics as columns (Markdown, LaTeX, tidy CSV).

A cell shows ``mean ± spread (Δ)``: the spread is the std over seeds (``metrics_std``) or, for
few-shot accuracy, its 95% confidence interval (``<metric>_ci95``); Δ is the difference to the
baseline row; the best value of each column is bold. Every metric is "higher is better".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reports.results import Results, finite, headline_metric, metric_names, task_label


@dataclass(frozen=True)
class Cell:
    value: float | None = None
    spread: float | None = None
    delta: float | None = None
    best: bool = False
    note: str = "–"  # shown when there is no value: failed / skipped / – (not run)


@dataclass
class Table:
    title: str
    columns: list[tuple[str, str]]  # (task name, metric)
    rows: list[str]  # checkpoint names
    cells: dict[tuple[str, int], Cell]

    def header(self, i: int, with_task: bool) -> str:
        task, metric = self.columns[i]
        return f"{task} {metric}" if with_task else metric


def ordered_names(results: Results, baseline: str | None) -> list[str]:
    """Checkpoint rows: the baseline first, then first-seen order."""
    if baseline is not None and baseline not in results.names:
        raise ValueError(f"--baseline {baseline}: no records for it (checkpoints: {results.names})")
    return ([baseline] if baseline else []) + [n for n in results.names if n != baseline]


def build_table(results: Results, columns: list[tuple[str, str]], baseline: str | None, title: str) -> Table:
    rows = ordered_names(results, baseline)
    raw: dict[tuple[str, int], Cell] = {}
    for i, (task, metric) in enumerate(columns):
        for name in rows:
            raw[(name, i)] = _raw_cell(results.get(name, task), metric)
    cells = {}
    for i in range(len(columns)):
        shown = [round(raw[(n, i)].value, 1) for n in rows if raw[(n, i)].value is not None]
        top = max(shown) if shown else None
        base = raw[(baseline, i)].value if baseline else None
        for name in rows:
            c = raw[(name, i)]
            if c.value is None:
                cells[(name, i)] = c
                continue
            # Δ of the values as shown, so a reader can check it against the table
            delta = round(c.value, 1) - round(base, 1) if base is not None and name != baseline else None
            cells[(name, i)] = Cell(c.value, c.spread, delta, len(shown) > 1 and round(c.value, 1) == top)
    return Table(title, columns, rows, cells)


def _raw_cell(record: dict | None, metric: str) -> Cell:
    if record is None:
        return Cell()
    if record.get("status") != "ok":
        return Cell(note=str(record.get("status") or "failed"))
    value = finite((record.get("metrics") or {}).get(metric))
    if value is None:
        return Cell()
    spread = finite((record.get("metrics_std") or {}).get(metric))
    if spread is None:
        spread = finite(record["metrics"].get(f"{metric}_ci95"))
    return Cell(value, spread)


def summary_table(results: Results, baseline: str | None) -> Table:
    columns = [(t, m) for t in results.tasks if (m := headline_metric(results, t))]
    return build_table(results, columns, baseline, "Summary: one headline metric per task")


def task_tables(results: Results, baseline: str | None) -> list[Table]:
    return [build_table(results, [(t, m) for m in metric_names(results, t)], baseline, task_label(results, t))
            for t in results.tasks if metric_names(results, t)]


def _fmt(cell: Cell, bold: tuple[str, str], pm: str, delta: tuple[str, str]) -> str:
    if cell.value is None:
        return cell.note
    text = f"{cell.value:.1f}"
    if cell.best:
        text = f"{bold[0]}{text}{bold[1]}"
    if cell.spread is not None:
        text += f"{pm}{cell.spread:.1f}"
    if cell.delta is not None:
        text += f"{delta[0]}({cell.delta:+.1f}){delta[1]}"
    return text


def to_markdown(table: Table, with_task: bool = False) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    head = ["checkpoint"] + [esc(table.header(i, with_task)) for i in range(len(table.columns))]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + [":---:"] * len(table.columns)) + "|"]
    for name in table.rows:
        cells = [_fmt(table.cells[(name, i)], ("**", "**"), " ± ", (" ", "")) for i in range(len(table.columns))]
        lines.append("| " + " | ".join([esc(name)] + cells) + " |")
    return "\n".join(lines)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_latex(table: Table, with_task: bool = False) -> str:
    """A booktabs table; one row per checkpoint."""
    head = ["Checkpoint"] + [tex_escape(table.header(i, with_task)) for i in range(len(table.columns))]
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_escape(table.title)}}}",
             r"\begin{tabular}{l" + "c" * len(table.columns) + "}", r"\toprule", " & ".join(head) + r" \\",
             r"\midrule"]
    for name in table.rows:
        cells = [_tex_cell(table.cells[(name, i)]) for i in range(len(table.columns))]
        lines.append(" & ".join([tex_escape(name)] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def _tex_cell(cell: Cell) -> str:
    if cell.value is None:
        return "--" if cell.note == "–" else tex_escape(cell.note)
    return _fmt(cell, (r"\textbf{", "}"), r"$\pm$", (r" {\scriptsize ", "}"))


def markdown_report(results: Results, baseline: str | None) -> str:
    """tables.md: the summary table, then one table per task with all its metrics."""
    note = (f"Δ in parentheses: difference to **{baseline}**. " if baseline else "") + (
        "± : std over seeds, or the 95% confidence interval over few-shot episodes. Bold: best in column. "
        "All numbers in percent.")
    parts = ["# Results", "", note, "", f"## {summary_table(results, baseline).title}", "",
             to_markdown(summary_table(results, baseline), with_task=True)]
    for table in task_tables(results, baseline):
        parts += ["", f"## {table.title}", "", to_markdown(table)]
    empty = [t for t in results.tasks if not metric_names(results, t)]
    if empty:
        why = {t: sorted({str(r.get("status")) for (n, tt), r in results.records.items() if tt == t}) for t in empty}
        parts += ["", "No result yet for: " + ", ".join(f"{t} ({'/'.join(why[t])})" for t in empty) + "."]
    return "\n".join(parts) + "\n"


def latex_report(results: Results, baseline: str | None) -> str:
    """tables.tex: the same tables for a paper (needs \\usepackage{booktabs})."""
    parts = [f"% generated by reports.build; baseline: {tex_escape(baseline or 'none')}; needs \\usepackage{{booktabs}}",
             to_latex(summary_table(results, baseline), with_task=True)]
    parts += [to_latex(t) for t in task_tables(results, baseline)]
    return "\n\n".join(parts) + "\n"


def tidy_frame(results: Results, baseline: str | None) -> pd.DataFrame:
    """One row per (checkpoint, task, metric); a failed/skipped task is one row with its status."""
    rows = []
    for (name, task), r in results.records.items():
        common = {"checkpoint": name, "task": task, "task_type": r.get("task"), "dataset": r.get("dataset"),
                  "scale": r.get("scale"), "method": r.get("method"), "status": r.get("status"),
                  "ckpt_sha256": (r.get("checkpoint") or {}).get("sha256"), "seeds": len(r.get("seeds") or []),
                  "code_version": r.get("code_version"), "end": r.get("end"), "error": r.get("error")}
        metrics = (r.get("metrics") or {}) if r.get("status") == "ok" else {}
        if not metrics:
            rows.append({**common, "metric": None, "value": None, "std": None, "delta": None})
        for metric, value in metrics.items():
            base = results.get(baseline, task) if baseline else None
            base_v = finite((base.get("metrics") or {}).get(metric)) if base and base.get("status") == "ok" else None
            v = finite(value)
            rows.append({**common, "metric": metric, "value": v,
                         "std": finite((r.get("metrics_std") or {}).get(metric)),
                         "delta": v - base_v if v is not None and base_v is not None and name != baseline else None})
    return pd.DataFrame(rows)
