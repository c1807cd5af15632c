"""The cells every report table is made of: one :class:`Cell` per (checkpoint group, task, metric),
built once by :func:`build_table` and printed by reports/tables.py (per-task tables) and
reports/family_render.py (family tables); number formatting and LaTeX escaping shared by both."""

from __future__ import annotations

from dataclasses import dataclass, replace

from reports import compare
from reports.compare import Delta, Stat
from reports.results import Results


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


def fmt(x: float, signed: bool = False) -> str:
    """One decimal, never "-0.0" (a difference of -0.004 is shown as +0.0)."""
    x = round(x, 1) + 0.0
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def fmt_interval(lo: float, hi: float, signed: bool = False) -> str:
    return f"[{fmt(lo, signed)}, {fmt(hi, signed)}]"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))
