"""The report's summary in words, computed from the numbers (never written by hand).

For every trained group other than the baseline and every task (its headline metric), the
difference to the baseline is sorted into: distinguishable from zero at 95 % (its interval excludes
0), not distinguishable (the interval covers 0), or without an interval (a fine-tuning task without
per-item scores). When the results hold an untrained network (a run's ``backbone_init.pth``,
method ``init``: the floor), every trained group, the baseline included, is compared with it the
same way instead. README's demo section quotes this text.
"""

from __future__ import annotations

from reports import compare
from reports.compare import Delta
from reports.results import Results
from reports.tables import fmt, fmt_interval, ordered_names, summary_table


def _item(task: str, metric: str, d: Delta) -> str:
    return f"{task} {metric} {fmt(d.value, True)}" + (f" {fmt_interval(d.lo, d.hi, True)}" if d.lo is not None else "")


def floors(results: Results) -> list[str]:
    """Groups whose every record is an untrained network (method ``init``): the floor a method must beat."""
    out = []
    for name in results.names:
        records = [r for (n, _), runs in results.runs.items() if n == name for r in runs]
        if records and all(r.get("method") == "init" for r in records):
            out.append(name)
    return out


def summary_lines(results: Results, baseline: str | None) -> list[str]:
    """Markdown lines: one paragraph per trained group, what its differences to the baseline say;
    then, if there is an untrained floor, one paragraph per trained group on its differences to it."""
    if baseline is None:
        return ["No baseline was given (`--baseline`): the report shows each group's numbers with their "
                "intervals but no differences.", ""]  # the seeds note: once, above the tables
    columns = summary_table(results, baseline).columns
    lines = [f"Differences to **{baseline}**, one per task (its headline metric), percentage points with "
             "95% intervals; \"distinguishable\" means the interval excludes 0.", ""]  # seeds note: with the tables
    floor_names = floors(results)
    for name in ordered_names(results, baseline)[1:]:
        if name not in floor_names:  # a floor is compared with every trained group below
            lines += _paragraph(results, name, baseline, columns)
    trained = [n for n in ordered_names(results, baseline) if n not in floor_names]
    for floor in (f for f in floor_names if f != baseline):  # a floor baseline: said above already
        lines += [f"Above the untrained floor: each trained group minus **{floor}** (the network before "
                  "pretraining), same tasks and intervals.", ""]
        for name in trained:
            lines += _paragraph(results, name, floor, columns)
    return lines


def _paragraph(results: Results, name: str, reference: str, columns) -> list[str]:
    """``name − reference`` on every (task, headline metric): a count line, then the differences by kind."""
    up, down, within, none = [], [], [], []
    for task, metric in columns:
        d = compare.delta(results, name, reference, task, metric)
        if d is None:
            continue
        target = none if d.lo is None else (up if d.lo > 0 else down) if d.marked else within
        target.append(_item(task, metric, d))
    counted = len(up) + len(down) + len(within) + len(none)
    if not counted:
        return []
    seeds = f"{results.n_seeds(name)} vs {results.n_seeds(reference)} seed(s)"
    lines = [f"**{name} − {reference}** ({seeds}): {len(up) + len(down)} of {counted} differences "
             f"distinguishable from zero at 95% ({len(up)} higher, {len(down)} lower), {len(within)} not"
             + (f", {len(none)} without an interval" if none else "") + "."]
    for label, items in (("higher", up), ("lower", down), ("not distinguishable from zero", within),
                         ("no interval (fine-tuning task without per-item scores; see its table)", none)):
        if items:
            lines.append(f"- {label}: " + "; ".join(items))
    return lines + [""]
