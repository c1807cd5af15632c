"""Per-task bar charts: one group per metric, one bar per checkpoint, the baseline hatched."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from reports.results import Results, finite, metric_names, task_label  # noqa: E402
from reports.tables import ordered_names  # noqa: E402


def task_bars(results: Results, task: str, baseline: str | None, path: Path) -> Path | None:
    """Bar chart of every metric of ``task`` for every checkpoint with an ok record; None if none has."""
    metrics = metric_names(results, task)
    names = [n for n in ordered_names(results, baseline)
             if (r := results.get(n, task)) is not None and r.get("status") == "ok"]
    if not metrics or not names:
        return None
    width = 0.8 / len(names)
    x = np.arange(len(metrics))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(metrics) * max(1, len(names)) / 2 + 2), 3.2))
    colors = plt.get_cmap("tab10").colors
    for i, name in enumerate(names):
        rec = results.get(name, task)
        vals = [finite(rec["metrics"].get(m)) for m in metrics]
        errs = [finite((rec.get("metrics_std") or {}).get(m)) or finite(rec["metrics"].get(f"{m}_ci95")) or 0.0
                for m in metrics]
        heights = [v if v is not None else 0.0 for v in vals]
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, heights, width, yerr=errs if any(errs) else None, capsize=2,
                      color=colors[i % len(colors)], label=name + (" (baseline)" if name == baseline else ""),
                      hatch="//" if name == baseline else None, edgecolor="black", linewidth=0.5)
        for bar, v in zip(bars, vals):
            if v is not None:
                ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x, metrics)
    ax.set_ylabel("%")
    ax.set_title(task_label(results, task), fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
