"""Figures: the forest plot of every difference to the baseline (looked at first), and per-task bars
with each group's interval and one dot per pretraining seed."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from plumbing.atomic import write_bytes_atomic  # noqa: E402
from reports import compare  # noqa: E402
from reports.results import Results, metric_names, task_label  # noqa: E402
from reports.tables import group_label, ordered_names, summary_table  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` (PNG, 110 dpi; atomic: a reader never sees half a file) and close it."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def forest(results: Results, baseline: str | None, path: Path) -> Path | None:
    """(group − baseline) per task (headline metric) with its 95 % interval; hollow: no interval."""
    if baseline is None:
        return None
    columns = summary_table(results, baseline).columns
    others = [n for n in ordered_names(results, baseline) if n != baseline]
    rows = [(task, metric, [compare.delta(results, n, baseline, task, metric) for n in others])
            for task, metric in columns]
    rows = [r for r in rows if any(d is not None for d in r[2])]
    if not rows or not others:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 0.9 + 0.42 * len(rows) * max(1, len(others)) ** 0.5))
    colors = plt.get_cmap("tab10").colors
    step = 0.7 / max(1, len(others))
    for j, name in enumerate(others):
        for i, (_, _, deltas) in enumerate(rows):
            d = deltas[j]
            if d is None:
                continue
            y = len(rows) - 1 - i + (j - (len(others) - 1) / 2) * step
            color = colors[(j + 1) % len(colors)]
            if d.lo is not None:
                ax.plot([d.lo, d.hi], [y, y], color=color, lw=1.6)
            ax.plot(d.value, y, "o", color=color, mfc=color if d.lo is not None else "white",
                    label=group_label(results, name) if i == next(k for k, r in enumerate(rows) if r[2][j]) else None)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{t} {m}" for t, m, _ in reversed(rows)], fontsize=8)
    ax.set_xlabel(f"difference to {baseline} (percentage points), 95% interval")
    ax.set_title(f"Each group minus {baseline}; hollow: no interval (single fine-tuning run)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return save_figure(fig, path)


def task_bars(results: Results, task: str, baseline: str | None, path: Path) -> Path | None:
    """Every metric of ``task``: one bar per group (its mean over seeds) with its interval, a dot per seed."""
    metrics = metric_names(results, task)
    names = [n for n in ordered_names(results, baseline) if any(compare.group_stat(results, n, task, m) for m in metrics)]
    if not metrics or not names:
        return None
    width = 0.8 / len(names)
    x = np.arange(len(metrics))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(metrics) * max(1, len(names)) / 2 + 2), 3.2))
    colors = plt.get_cmap("tab10").colors
    for i, name in enumerate(names):
        stats = [compare.group_stat(results, name, task, m) for m in metrics]
        heights = [s.value if s else 0.0 for s in stats]
        err = np.array([[s.value - s.lo, s.hi - s.value] if s and s.lo is not None else
                        [s.std or 0.0, s.std or 0.0] if s and s.n_seeds <= 1 else [0.0, 0.0] for s in stats]).T
        xs = x + (i - (len(names) - 1) / 2) * width
        bars = ax.bar(xs, heights, width, yerr=err if err.any() else None, capsize=2, color=colors[i % len(colors)],
                      label=group_label(results, name) + (" (baseline)" if name == baseline else ""),
                      hatch="//" if name == baseline else None, edgecolor="black", linewidth=0.5, alpha=0.85)
        for xi, s in zip(xs, stats):
            if s is not None and s.n_seeds > 1:
                ax.plot([xi] * s.n_seeds, s.per_seed, "o", ms=3, color="black", zorder=3)
        for bar, s in zip(bars, stats):
            if s is not None:
                top = s.hi if s.lo is not None else s.value + (s.std or 0.0) if s.n_seeds <= 1 else max(s.per_seed)
                ax.annotate(f"{s.value:.1f}", (bar.get_x() + bar.get_width() / 2, max(top, s.value)),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x, metrics)
    ax.set_ylabel("%")
    ax.set_title(task_label(results, task) + "\nbar: mean over seeds, whisker: 95% interval, dot: one seed",
                 fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return save_figure(fig, path)
