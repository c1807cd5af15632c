"""The family tables (:mod:`reports.families`) printed compactly, for a screen and for a paper.

A cell is ``72.3±0.4``; what ± is depends on what the number has (:func:`spread`): the half-width
of its 95 % interval (probes, few-shot), else the std over fine-tuning runs, else the std over the
group's pretraining seeds; a single fine-tuning run has no ±. Each table's footnote names the kinds
it holds; when it holds several, each ± carries a mark saying which. Under each method row, a Δ row
gives its difference to the baseline: ``+1.2†`` when the 95 % interval of the difference excludes 0,
``+1.2`` when it covers 0, ``(+1.2)`` when there is no interval (fine-tuning without per-item
scores). The full intervals are in the per-task tables and ``results.csv``. Bold: the best group per
column. Published rows (:class:`reports.families.Reference`) come last, in italics, never bold and
never compared.
"""

from __future__ import annotations

from dataclasses import dataclass

from reports.cells import Cell, fmt, ordered_names, tex_escape
from reports.families import Column, FamilyTable
from reports.results import Results

KINDS = {  # ± kind -> (mark when a table mixes kinds, what it is)
    "ci": ("", "half-width of the 95% bootstrap interval (over test items, and over the seeds of a group: pretraining seeds, and fine-tuning seeds where a task ran several)"),
    "runs": ("r", "std over fine-tuning runs"),
    "seeds": ("s", "std over the group's pretraining seeds"),
}
FEWER = "‡"  # the value comes from fewer of the group's pretraining seeds than it has


@dataclass(frozen=True)
class Style:
    tex: bool

    def bold(self, s: str) -> str:
        return rf"\textbf{{{s}}}" if self.tex else f"**{s}**"

    def pm(self, s: str) -> str:
        return rf"{{\scriptsize$\pm${s}}}" if self.tex else f"±{s}"

    def sup(self, s: str) -> str:
        if self.tex:
            return rf"$^{{\rm {s}}}$" if s.isalpha() else r"$^\ddagger$"
        return {"r": "ʳ", "s": "ˢ"}.get(s, s)

    def italic(self, s: str) -> str:
        return rf"\textit{{{s}}}" if self.tex else f"*{s}*"

    @property
    def dagger(self) -> str:
        return r"$^\dagger$" if self.tex else "†"

    @property
    def dash(self) -> str:
        return "--" if self.tex else "–"

    def text(self, s: str) -> str:
        return tex_escape(s).replace("Δ", r"$\Delta$").replace("–", "--") if self.tex else s


MD, TEX = Style(False), Style(True)


def spread(cell: Cell) -> tuple[float, str] | None:
    """(the ± value, its kind) of a cell; None for a single run or no value."""
    s = cell.stat
    if s is None:
        return None
    if s.lo is not None and s.hi is not None:
        return (s.hi - s.lo) / 2, "ci"
    if s.std is not None:
        return s.std, "seeds" if s.n_seeds > 1 else "runs"
    return None


def kinds(table: FamilyTable) -> list[str]:
    found = {k for c in table.table.cells.values() if (sp := spread(c)) for k in [sp[1]]}
    return [k for k in KINDS if k in found]


def value_text(cell: Cell, style: Style, mixed: bool) -> str:
    """``72.3±0.4`` (bold when best), with the ± kind's mark when the table mixes kinds."""
    if cell.stat is None:
        return style.dash if cell.note == "–" else style.text(cell.note)
    text = fmt(cell.value)
    text = style.bold(text) if cell.best else text
    sp = spread(cell)
    if sp is not None:
        text += style.pm(fmt(sp[0])) + (style.sup(KINDS[sp[1]][0]) if mixed and KINDS[sp[1]][0] else "")
    if cell.group_seeds > cell.stat.n_seeds:
        text += style.sup(FEWER)
    return text


def delta_text(cell: Cell, style: Style) -> str:
    d = cell.delta
    if d is None:
        return ""
    if d.lo is None:
        return f"({fmt(d.value, True)})"
    return fmt(d.value, True) + (style.dagger if d.marked else "")


def rows(ft: FamilyTable, results: Results, baseline: str | None, style: Style) -> list[tuple[str, list[str], str]]:
    """(label, cells, kind) per printed row; kind: "group", "delta" or "reference"."""
    table, mixed = ft.table, len(kinds(ft)) > 1
    out = []
    for name, label in zip(ordered_names(results, baseline), table.rows):
        cells = [table.cells[(label, i)] for i in range(len(ft.columns))]
        out.append((style.text(label), [value_text(c, style, mixed) for c in cells], "group"))
        if baseline and name != baseline and any(c.delta for c in cells):
            label = (r"\quad " if style.tex else "") + style.text(f"Δ vs {baseline}")
            out.append((label, [delta_text(c, style) for c in cells], "delta"))
    for ref in ft.references:
        vals = [ref.value(c) for c in ft.columns]
        label = style.italic(style.text(f"{ref.method} {ref.arch} (published)"))
        out.append((label, [style.italic(fmt(v)) if v is not None else "" for v in vals], "reference"))
    return out


def footnote(ft: FamilyTable, baseline: str | None, style: Style) -> str:
    """What the table's symbols mean, from what it holds."""
    t, pm, ks, parts = style.text, (r"$\pm$" if style.tex else "±"), kinds(ft), []
    for k in ks:
        mark = style.sup(KINDS[k][0]) if len(ks) > 1 and KINDS[k][0] else ""
        parts.append(f"{pm}{mark}: {t(KINDS[k][1])}")
    cells = ft.table.cells.values()
    if any(c.stat is not None and spread(c) is None for c in cells):
        parts.append(f"no {pm}: " + t("no interval (a single fine-tuning run, or a record without per-item scores)"))
    if any(c.stat is not None and c.group_seeds > c.stat.n_seeds for c in cells):
        parts.append(style.sup(FEWER) + t(": from fewer of the group's pretraining seeds (the per-task tables say how many)"))
    deltas = [c.delta for c in cells if c.delta is not None]
    if deltas:  # only the kinds of difference the table holds
        say = [t(f"Δ: difference to {baseline}")]
        if any(d.marked for d in deltas):
            say.append(style.dagger + t(": its 95% interval excludes 0"))
        if any(d.lo is not None and not d.marked for d in deltas):
            say.append(t("no mark: its 95% interval covers 0"))
        if any(d.lo is None for d in deltas):
            say.append(t("(Δ): no interval (a task without per-item scores on both sides, e.g. fine-tuning)"))
        parts.append("; ".join(say))
    parts.append(t(_metric_note(ft) + "bold: best in column"))
    if ft.references:
        parts.append(t("published rows (italics; not run here, may differ in backbone or schedule): "
                       + "; ".join(f"{r.method} {r.arch}: {r.source}" for r in ft.references)))
    if ft.protocols:
        parts.append(t("ViT rows ran their codebase's own protocol: " + "; ".join(ft.protocols)))
    parts.append(t(f"column order: {ft.family.source}" if ft.family.source else "columns in the order they ran"))
    return "; ".join(parts) + "."


def _metric_note(ft: FamilyTable) -> str:
    """In a one-metric table (linear, kNN), which datasets use another metric than the title's."""
    if not _one_metric(ft):
        return ""
    main = _main_metric(ft)
    other: dict[str, list[str]] = {}
    for c in ft.columns:
        if c.metric and c.metric != main:
            other.setdefault(c.label(), []).append(c.dataset)
    return "".join(f"{m}: {', '.join(ds)}; " for m, ds in other.items())


def _main_metric(ft: FamilyTable) -> str | None:
    metrics = [c.metric for c in ft.columns if c.metric]
    return max(dict.fromkeys(metrics), key=metrics.count) if metrics else None


def _groups(columns: list[Column]) -> list[tuple[str, int, int]]:
    """(dataset header, first column index, count) for runs of columns of one dataset."""
    out: list[tuple[str, int, int]] = []
    for i, c in enumerate(columns):
        if out and out[-1][0] == c.dataset and out[-1][1] + out[-1][2] == i:
            out[-1] = (c.dataset, out[-1][1], out[-1][2] + 1)
        else:
            out.append((c.dataset, i, 1))
    return out


def to_markdown(ft: FamilyTable, results: Results, baseline: str | None) -> str:
    """The dataset names once per group (``VOC07+12 AP50 | AP | AP75``), then one row per method."""
    head = []
    for name, start, n in _groups(ft.columns):
        for j in range(n):
            metric = ft.columns[start + j].label()
            head.append(" ".join(filter(None, (name if j == 0 else "", metric if n > 1 or not _one_metric(ft) else ""))))
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| method | " + " | ".join(map(esc, head)) + " |", "|---|" + ":---:|" * len(head)]
    lines += ["| " + " | ".join([esc(label)] + cells) + " |" for label, cells, _ in rows(ft, results, baseline, MD)]
    return "\n".join(lines) + "\n\n" + footnote(ft, baseline, MD)


def _one_metric(ft: FamilyTable) -> bool:
    """Every dataset shows one metric, the same everywhere or named in the title (linear, kNN, mIoU)."""
    return all(n == 1 for _, _, n in _groups(ft.columns))


def title(ft: FamilyTable) -> str:
    main = _main_metric(ft)
    return ft.table.title + (f" ({next(c.label() for c in ft.columns if c.metric == main)})"
                             if _one_metric(ft) and main else "")


def to_latex(ft: FamilyTable, results: Results, baseline: str | None) -> str:
    """A booktabs table: grouped dataset headers (``\\multicolumn`` + ``\\cmidrule``) over metric names."""
    n, groups = len(ft.columns), _groups(ft.columns)
    wide = n > 6
    env = "table*" if wide else "table"
    lines = [rf"\begin{{{env}}}[t]", r"\centering", r"\small", r"\setlength{\tabcolsep}{4pt}",
             rf"\caption{{{tex_escape(title(ft))}. {footnote(ft, baseline, TEX)}}}",
             *([r"\resizebox{\textwidth}{!}{%"] if wide else []),  # 7+ columns: scaled to the text width
             rf"\begin{{tabular}}{{l{'c' * n}}}", r"\toprule"]
    if _one_metric(ft):
        lines.append(" & ".join(["Method"] + [tex_escape(c.dataset) for c in ft.columns]) + r" \\")
    else:
        lines.append(" & ".join(["Method"] + [rf"\multicolumn{{{k}}}{{c}}{{{tex_escape(g)}}}" if k > 1
                                              else tex_escape(g) for g, _, k in groups]) + r" \\")
        lines.append(" ".join(rf"\cmidrule(lr){{{s + 2}-{s + k + 1}}}" for _, s, k in groups))
        lines.append(" & ".join([""] + [c.label(tex=True) for c in ft.columns]) + r" \\")
    lines.append(r"\midrule")
    previous = "group"
    for label, cells, kind in rows(ft, results, baseline, TEX):
        if kind == "reference" and previous != "reference":
            lines.append(r"\midrule")
        lines.append(" & ".join([label] + cells) + r" \\")
        previous = kind
    lines += [r"\bottomrule", r"\end{tabular}", *(["}"] if wide else []), rf"\end{{{env}}}"]
    return "\n".join(lines)


def summary(tables: list[FamilyTable], results: Results, baseline: str | None) -> str:
    """One column per family: each group's mean over the family's headline column of every dataset
    (the first metric the paper prints for it) and, beside it, how its differences to the baseline
    fall: ↑ higher and ↓ lower with intervals excluding 0, of the differences it has."""
    heads = []
    for ft in tables:
        first = [i for name, start, _ in _groups(ft.columns) for i in [start] if ft.columns[i].metric]
        paper = [i for i in first if " [" not in ft.columns[i].task]  # a [smoke] column is never averaged in
        tags = sorted({ft.columns[i].task.split(" [", 1)[1] for i in first if i not in paper})
        heads.append((ft, paper or first, "" if paper else "".join(f" [{t}" for t in tags)))
    names = ordered_names(results, baseline)
    cols = [f"{ft.family.name} ({len(first)}){tag}" for ft, first, tag in heads]
    lines = ["| method | " + " | ".join(c.replace("|", "\\|") for c in cols) + " |", "|---|" + ":---:|" * len(cols)]
    for name, label in zip(names, heads[0][0].table.rows if heads else []):
        cells = []
        for ft, first, _ in heads:
            got = [ft.table.cells[(label, i)] for i in first if ft.table.cells[(label, i)].value is not None]
            if not got:
                cells.append("–")
                continue
            text = fmt(sum(c.value for c in got) / len(got)) + (f" [{len(got)}]" if len(got) < len(first) else "")
            deltas = [c.delta for c in got if c.delta is not None]
            if deltas:
                up = sum(d.marked and d.value > 0 for d in deltas)
                down = sum(d.marked and d.value < 0 for d in deltas)
                text += f" ({fmt(sum(d.value for d in deltas) / len(deltas), True)}; ↑{up} ↓{down})"
            cells.append(text)
        lines.append("| " + " | ".join([label] + cells) + " |")
    note = ("Each cell: the unweighted mean over the family's datasets (how many: in the header; [k]: this row "
            "has k of them) of its headline column (the first metric its table below shows per dataset). The mean "
            "has no interval of its own: the family tables give every number's ± and every difference's mark.")
    if baseline:
        note += (f" In parentheses: the mean difference to {baseline}; ↑/↓: how many of the per-dataset differences "
                 "are higher/lower with a 95% interval that excludes 0.")
    return "\n".join(lines) + "\n\n" + note
