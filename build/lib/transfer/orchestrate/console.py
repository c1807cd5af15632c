"""What run_all prints: one line per finished task, the final table, the outcome line.

Formatting only: every line is built from records (transfer.records.Record's JSON form), so a
record read back from ``results.jsonl`` prints as the one just finished did.
"""

from __future__ import annotations

from typing import Iterable


def clip(text: str, width: int) -> str:
    """``text`` on one line, at most ``width`` characters, cut between words (never mid-word) with '…'."""
    text = " ".join(str(text).split())
    if len(text) <= width:
        return text
    cut = text[: width - 1].rsplit(" ", 1)[0]
    return (cut if cut else text[: width - 1]) + "…"


def headline(record: dict) -> str:
    """An ok record's first four metrics (its ``headline`` first), else its error, clipped."""
    metrics = {k: v for k, v in (record.get("metrics") or {}).items() if not k.endswith("_ci95")}
    if record.get("status") != "ok":
        return clip(record.get("error") or "", 160)
    first = record.get("headline")
    names = ([first] if first in metrics else []) + [k for k in metrics if k != first]
    return "  ".join(f"{k}={float(metrics[k]):.1f}" for k in names[:4])


def elapsed(seconds: float) -> str:
    """``1h02m03s``, ``2m03s`` or ``3.0s``."""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


def plan_line(suite_name: str, suite_path: object, n_tasks: int, n_ckpts: int, n_done: int, n_todo: int,
              results: object) -> str:
    """The line run_all starts with: what the suite is and how much of it is left to run."""
    return (f"suite {suite_name} ({suite_path}): {n_tasks} task(s) x {n_ckpts} checkpoint(s); "
            f"{n_done} already done, {n_todo} to run; results -> {results}")


def done_line(record: dict, wall_s: float | None) -> str:
    """What the job runner prints after a task's label when it finishes: status, time, headline."""
    return f"{record['status']} {elapsed(wall_s or 0)}  {headline(record)}"


def interrupted_line(n_recorded: int, n_todo: int, stopped: Iterable[str]) -> str:
    stopped = list(stopped)
    return (f"interrupted: {n_recorded} task(s) recorded, {n_todo - n_recorded} not "
            f"(stopped: {', '.join(stopped) or 'none'}).")


def summary(records: list[dict]) -> str:
    """The terminal's final table: one line per (checkpoint, task)."""
    rows = [("checkpoint", "task", "status", "time", "result")]
    for r in records:
        took = r.get("wall_s") or r.get("elapsed_s")  # wall time, process start included
        rows.append((r["name"], r["task_name"], r["status"], elapsed(took) if took else "-", headline(r)))
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    lines = []
    for j, row in enumerate(rows):
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + f" | {row[4]} |")
        if j == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|---|")
    return "\n".join(lines)


def outcome(records: list[dict]) -> tuple[str, bool]:
    """``8 tasks: 0 ok, 8 skipped: <first reason>`` and whether none of them gave a result."""
    if not records:
        return "", False
    counts = {s: sum(r.get("status") == s for r in records) for s in ("ok", "skipped", "failed")}
    parts = [f"{counts['ok']} ok"] + [f"{n} {s}" for s, n in counts.items() if s != "ok" and n]
    first = next((r for r in records if r.get("status") != "ok"), None)
    reason = f": {first['task_name']}: {clip(first.get('error') or '', 400)}" if first else ""
    return f"{len(records)} tasks: {', '.join(parts)}{reason}", counts["ok"] == 0
