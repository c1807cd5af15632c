"""The report's summary in words, computed from the numbers (never written by hand).

For every group other than the baseline and every task (its headline metric), the difference to
the baseline is sorted into: distinguishable from zero at 95 % (its interval excludes 0), not
distinguishable (the interval covers 0), or without an interval (a fine-tuning task without
per-item scores). README's demo section quotes this text.
"""

from __future__ import annotations

from reports import compare
from reports.compare import Delta
from reports.results import Results
from reports.tables import fmt, fmt_interval, ordered_names, seeds_note, summary_table


def _item(task: str, metric: str, d: Delta) -> str:
    return f"{task} {metric} {fmt(d.value, True)}" + (f" {fmt_interval(d.lo, d.hi, True)}" if d.lo is not None else "")


def summary_lines(results: Results, baseline: str | None) -> list[str]:
    """Markdown lines: one paragraph per group, what its differences to the baseline say."""
    if baseline is None:
        return ["No baseline was given (`--baseline`): the report shows each group's numbers with their "
                "intervals but no differences.", "", seeds_note(results)]
    columns = summary_table(results, baseline).columns
    lines = [f"Differences to **{baseline}**, one per task (its headline metric), percentage points with "
             "95% intervals; \"distinguishable\" means the interval excludes 0.", "", seeds_note(results), ""]
    for name in ordered_names(results, baseline)[1:]:
        up, down, within, none = [], [], [], []
        for task, metric in columns:
            d = compare.delta(results, name, baseline, task, metric)
            if d is None:
                continue
            target = none if d.lo is None else (up if d.lo > 0 else down) if d.marked else within
            target.append(_item(task, metric, d))
        counted = len(up) + len(down) + len(within) + len(none)
        if not counted:
            continue
        seeds = f"{results.n_seeds(name)} vs {results.n_seeds(baseline)} seed(s)"
        lines.append(f"**{name} − {baseline}** ({seeds}): {len(up) + len(down)} of {counted} differences "
                     f"distinguishable from zero at 95% ({len(up)} higher, {len(down)} lower), {len(within)} not"
                     + (f", {len(none)} without an interval" if none else "") + ".")
        for label, items in (("higher", up), ("lower", down), ("not distinguishable from zero", within),
                             ("no interval (fine-tuning task without per-item scores; see its table)", none)):
            if items:
                lines.append(f"- {label}: " + "; ".join(items))
        lines.append("")
    return lines
