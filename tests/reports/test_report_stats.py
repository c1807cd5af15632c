"""Reports with seeds and intervals: records + predictions.npz as the probes write them, through reports.build."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports import build, compare, tables
from reports.results import load_results
from transfer.stats import mean_interval

N_ITEMS = 400


def _record(root: Path, name: str, seed: int, task: str, scores: np.ndarray) -> dict:
    rel = f"{name}/s{seed}/{task}/predictions.npz"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    np.savez(root / rel, top1_k20=scores.astype(np.float32))
    iv = mean_interval(scores)
    sha = hashlib.sha256(f"{name}{seed}".encode()).hexdigest()
    return {"task": "knn", "task_name": task, "dataset": f"synthetic/{task}", "scale": "demo", "name": name,
            "status": "ok", "metrics": {"top1_k20": 100 * iv.value}, "metrics_std": {}, "seeds": [0],
            "intervals": {"top1_k20": {"lo": 100 * iv.lo, "hi": 100 * iv.hi, "level": 0.95}},
            "predictions": rel, "seed_index": seed, "ckpt_sha256": sha, "method": name,
            "checkpoint": {"sha256": sha, "path": f"/runs/{name}_s{seed}/backbone.pth", "arch": "resnet18"}}


def _write(root: Path, groups: dict[str, list[dict[str, np.ndarray]]],
           pretrain_seeds: dict[str, list[int]] | None = None) -> Path:
    """groups: name -> one {task: per-item scores} per seed; pretrain_seeds: name -> each seed's ``pretrain_seed``."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [dict(_record(root, name, s, task, scores), **({"pretrain_seed": pretrain_seeds[name][s]}
                                                          if pretrain_seeds else {}))
             for name, seeds in groups.items() for s, by_task in enumerate(seeds) for task, scores in by_task.items()]
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root / "results.jsonl"


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return np.random.default_rng(0).random(N_ITEMS)


def _seeds(truth: np.ndarray, levels: list[float], task: str = "shift") -> list[dict[str, np.ndarray]]:
    same = (truth < 0.5).astype(float)  # identical for every checkpoint: the difference is exactly 0
    return [{task: (truth < q).astype(float), "same": same} for q in levels]


def test_grouping_by_name_merges_seeds_and_pairs_differences(tmp_path, truth):
    path = _write(tmp_path / "res", {"base": _seeds(truth, [0.60, 0.61, 0.59]), "new": _seeds(truth, [0.80, 0.81, 0.79])})
    results = load_results(path)
    assert results.names == ["base", "new"] and results.n_seeds("new") == 3 and len(results.seeds("new", "shift")) == 3
    summary = tables.summary_table(results, "base")
    col = summary.columns.index(("shift", "top1_k20"))
    cell = summary.cells[("new (3 seeds)", col)]
    means = {q: 100 * (truth < q).mean() for q in (0.6, 0.61, 0.59, 0.8, 0.81, 0.79)}
    assert cell.value == pytest.approx(np.mean([means[q] for q in (0.8, 0.81, 0.79)]))  # the mean over seeds
    assert cell.stat.n_seeds == 3 and cell.stat.per_seed == pytest.approx([means[q] for q in (0.8, 0.81, 0.79)])
    shift = cell.value - np.mean([means[q] for q in (0.6, 0.61, 0.59)])
    assert cell.delta.value == pytest.approx(shift) and cell.delta.lo < shift < cell.delta.hi and cell.delta.marked
    same = summary.cells[("new (3 seeds)", summary.columns.index(("same", "top1_k20")))].delta
    assert (same.value, same.lo, same.hi) == (0.0, 0.0, 0.0) and not same.marked  # identical predictions
    md = tables.markdown_report(results, "base")
    assert "new s0" in md and "new s2" in md and "new (3 seeds)" in md and " sd " in md
    assert re.search(r"\| new \(3 seeds\) \| [^|]*" + re.escape(f"({shift:+.1f} [") + r"[^]]*\]†\)", md)
    df = tables.tidy_frame(results, "base")
    rows = df[(df.checkpoint == "new") & (df.task == "shift")]
    assert sorted(map(str, rows.seed)) == ["0", "1", "2", "all"] and set(rows.n_seeds) == {3}
    assert {"delta", "delta_lo", "delta_hi", "n_seeds"} <= set(df.columns)


def test_seeds_are_paired_only_when_both_groups_have_the_same_pretraining_seeds(tmp_path, truth):
    # a large seed effect shared by both methods (same seed = same init) and a 2-point shift between them
    levels = [0.45, 0.60, 0.75]
    groups = {"base": _seeds(truth, levels), "new": _seeds(truth, [q + 0.02 for q in levels])}
    widths = {}
    for label, seeds in {"same": [0, 1, 2], "other": [3, 4, 5], "unknown": None}.items():
        path = _write(tmp_path / label, groups, {"base": [0, 1, 2], "new": seeds} if seeds else None)
        results = load_results(path)
        runs = [results.seeds(n, "shift") for n in ("base", "new")]
        assert compare.seeds_paired(runs[1], runs[0]) == (label != "other")
        d = compare.delta(results, "new", "base", "shift", "top1_k20")
        assert d.lo < d.value < d.hi and d.value == pytest.approx(2.0, abs=1.5)
        widths[label] = d.hi - d.lo
    assert widths["same"] == widths["unknown"]  # unknown seeds, as many: paired by position
    assert widths["other"] > 5 * widths["same"]  # unpaired: the seed effect no longer cancels


def test_one_seed_report_says_so_and_shows_no_seed_spread(tmp_path, truth):
    path = _write(tmp_path / "res", {"base": _seeds(truth, [0.6]), "new": _seeds(truth, [0.62])})
    index = build.build(path, tmp_path / "report", baseline="base", command="pytest")
    text, md = index.read_text(), (tmp_path / "report" / "tables.md").read_text()
    assert "1 seed per checkpoint" in text and "1 seed per checkpoint" in md
    assert " sd " not in md and "seeds)" not in md and " s0 " not in md
    # the narrative is computed from the numbers: "new" is right on every item "base" gets right, and on a
    # few more (paired items make that small gain distinguishable); "same" is identical: exactly 0
    assert "**new − base** (1 vs 1 seed(s)): 1 of 2 differences distinguishable from zero at 95% (1 higher" in text
    assert "- higher: shift top1_k20 +" in text
    assert "- not distinguishable from zero: same top1_k20 +0.0 [+0.0, +0.0]" in text
    assert text.index("forest.png") < text.index("bars_shift.png")  # the forest plot comes first


def test_the_narrative_compares_every_trained_group_with_the_untrained_floor(tmp_path, truth):
    path = _write(tmp_path / "res", {"base": _seeds(truth, [0.6, 0.62]), "new": _seeds(truth, [0.61, 0.63]),
                                     "random_init": _seeds(truth, [0.2])})
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for r in records:  # a run's backbone_init.pth: run_all records its method as "init"
        r["method"] = "init" if r["name"] == "random_init" else r["method"]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    text = build.build(path, tmp_path / "report", baseline="base", command="pytest").read_text()
    summary = text[text.index("## What the numbers say"):text.index("## Checkpoints")]
    assert "Above the untrained floor: each trained group minus **random_init**" in summary
    for name in ("base", "new"):  # "shift": 60 % against the floor's 20 %; "same": identical items, exactly 0
        assert (f"**{name} − random_init** (2 vs 1 seed(s)): 1 of 2 differences distinguishable from zero at 95% "
                "(1 higher, 0 lower), 1 not.") in summary
    assert "**random_init − random_init**" not in summary
    assert "**random_init − base**" not in summary  # said once, as base − random_init
    assert summary.index("**new − base**") < summary.index("Above the untrained floor")


def test_a_group_row_says_when_a_task_ran_on_fewer_of_its_seeds(tmp_path, truth):
    groups = {"base": _seeds(truth, [0.6, 0.62, 0.64]), "new": _seeds(truth, [0.61, 0.63, 0.65])}
    for name in groups:  # "same" ran on seed 0 only (as the demo's fine-tuning tasks do)
        for seed in groups[name][1:]:
            del seed["same"]
    path = _write(tmp_path / "res", groups)
    md = tables.markdown_report(load_results(path), "base")
    family, per_task = md.split("## Per-task tables")
    rows = [ln for ln in per_task.splitlines() if ln.startswith("| new (3 seeds) |")]  # tables shift, same
    shift, same = (row.split(" | ")[1] for row in rows)
    assert "sd " in shift and "of 3 seeds" not in shift  # every seed ran "shift"
    value = tables.fmt(100 * (truth < 0.5).mean())
    assert re.fullmatch(rf"\**{re.escape(value)}\** \[[^]]*\] \(1 of 3 seeds\) \(\+0\.0 \[\+0\.0, \+0\.0\]\) \|",
                        same), same
    assert "k of n seeds: the task ran on k of the group's n pretraining seeds" in md
    # the family table (shift, same side by side): ‡ on the value that comes from 1 of the 3 seeds only
    row = next(ln for ln in family.split("## k-NN")[1].splitlines() if ln.startswith("| new (3 seeds) |"))
    assert [c.endswith("‡") for c in row.strip("| ").split(" | ")[1:]] == [False, True]
    assert "‡: from fewer of the group's pretraining seeds" in family


def test_markdown_latex_and_csv_carry_the_same_intervals(tmp_path, truth):
    """The per-task tables print results.csv's intervals in full; the family tables (Markdown and
    LaTeX) print the same value with half the interval's width as ±, and mark the same differences."""
    path = _write(tmp_path / "res", {"base": _seeds(truth, [0.6, 0.65]), "new": _seeds(truth, [0.7, 0.66])})
    build.build(path, tmp_path / "report", baseline="base", command="pytest")
    md = (tmp_path / "report" / "tables.md").read_text()
    family_md, per_task = md.split("## Per-task tables")
    tex = (tmp_path / "report" / "tables.tex").read_text()
    df = pd.read_csv(tmp_path / "report" / "results.csv")
    checked = 0
    for _, row in df[df.lo.notna()].iterrows():
        label = f"{row.checkpoint} (2 seeds)" if row.seed == "all" else f"{row.checkpoint} s{row.seed}"
        expect = [tables.fmt(row.value), tables.fmt_interval(row.lo, row.hi)]
        if not pd.isna(row.delta_lo):
            expect.append(f"({tables.fmt(row.delta, True)} {tables.fmt_interval(row.delta_lo, row.delta_hi, True)}")
        md_rows = [ln for ln in per_task.splitlines() if ln.startswith(f"| {label} |")]
        assert md_rows and all(any(text in ln for ln in md_rows) for text in expect), (expect, md_rows)
        if row.seed == "all":  # the family tables: value±half-width, the same in Markdown and LaTeX
            compact = tables.fmt(row.value), tables.fmt((row.hi - row.lo) / 2)
            fam_md = [ln for ln in family_md.splitlines() if ln.startswith(f"| {label} |")]
            fam_tex = [ln for ln in tex.splitlines() if ln.startswith(tables.tex_escape(label) + " &")]
            assert any(re.search(rf"\**{re.escape(compact[0])}\**±{re.escape(compact[1])}\b", ln) for ln in fam_md)
            assert any(re.search(rf"{re.escape(compact[0])}}}?{{\\scriptsize\$\\pm\${re.escape(compact[1])}}}", ln)
                       for ln in fam_tex), (compact, fam_tex)
        checked += 1
    assert checked == 2 * 2 * (2 + 1)  # 2 groups x 2 tasks x (2 seeds + the group row)
    marked = int((df[df.seed == "all"].distinguishable == True).sum())  # noqa: E712
    assert marked >= 1  # "shift" differs by 5 points on 400 paired items
    # every group difference once in its task's table and once in the Δ row of its family table
    assert per_task.count("]†)") == marked and family_md.count("†") - family_md.count("†:") == marked
    assert tex.count(r"$^\dagger$") - tex.count(r"$^\dagger$:") == marked
