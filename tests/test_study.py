"""``make study`` (transfer/orchestrate/study.py) and its report (reports/study_report.py, reports/study_stats.py)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import yaml

from reports.study_report import collect
from reports.study_stats import paired_difference, signed, t_interval, verdict
from transfer.orchestrate import study
from transfer.orchestrate.jobs import Runner


# --- statistics -------------------------------------------------------------------------------------------
def test_t_interval_matches_the_student_t_formula():
    iv = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / 3 ** 0.5  # t_{0.975, 2} · s / √n with s = 1
    assert iv.mean == pytest.approx(2.0) and iv.n == 3
    assert iv.lo == pytest.approx(2.0 - half) and iv.hi == pytest.approx(2.0 + half)
    single = t_interval([5.0])
    assert single.lo is None and single.text() == "5.0 (1 seed)" and not single.excludes_zero
    with pytest.raises(ValueError, match="at least one value"):
        t_interval([])


def test_paired_difference_identical_shifted_and_disjoint():
    a = {0: 50.0, 1: 60.0, 2: 55.0}
    same = paired_difference(a, dict(a))
    assert (same.mean, same.lo, same.hi) == (0.0, 0.0, 0.0) and not same.excludes_zero
    shifted = paired_difference({s: v + 2 for s, v in a.items()}, a)  # pairing removes the seed spread
    assert shifted.mean == pytest.approx(2.0) and shifted.lo == pytest.approx(2.0) and shifted.excludes_zero
    assert "higher" in verdict("kNN color", "VICReg", shifted) and "excludes 0" in verdict("kNN color", "VICReg", shifted)
    assert "lower" in verdict("x", "VICReg", paired_difference(a, {s: v + 1 for s, v in a.items()}))
    noisy = paired_difference({0: 1.0, 1: -1.0, 2: 0.5}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert not noisy.excludes_zero and "includes 0" in verdict("x", "VICReg", noisy)
    assert paired_difference({0: 1.0}, {1: 1.0}) is None
    assert "1 seed" in verdict("x", "VICReg", paired_difference({0: 1.0}, {0: 0.0}))
    assert signed(-0.04) == "+0.0" and signed(-1.25) == "-1.2" and signed(3) == "+3.0"


def test_collect_keeps_study_names_and_the_last_ok_record():
    def rec(name, task, value, status="ok"):
        return {"name": name, "task_name": task, "status": status, "metrics": {"top1_k20": value, "top1": value}}
    values, used = collect([rec("mast_s0", "knn_color", 10.0), rec("mast_s0", "knn_color", 12.0),
                            rec("mast_s0", "knn_color", 99.0, "failed"), rec("random_init", "knn_color", 5.0),
                            rec("vicreg_s1", "linear_side", 70.0), rec("simclr_s0", "knn_color", 1.0)])
    assert values["kNN color"] == {"mast": {0: 12.0}}
    assert values["linear side"] == {"vicreg": {1: 70.0}}
    assert len(used) == 2


def test_study_suite_holds_exactly_the_reported_tasks():
    from reports.study_report import TASKS
    from transfer.suite import load_suite

    suite = load_suite(str(study.SUITE))
    assert {t.name for t in suite.tasks} == {task for task, _, _ in TASKS}
    assert {t.task for t in suite.tasks} == {"knn", "linear", "fewshot"}  # frozen-feature probes only


# --- orchestration ---------------------------------------------------------------------------------------
def test_execute_runs_dependencies_first_and_skips_dependents_of_a_failure(tmp_path, capsys):
    def job(name, code, deps=()):
        return study.Job(name, [sys.executable, "-c", f"raise SystemExit({code})"], tmp_path / f"{name}.log", list(deps))
    jobs = [job("pretrain:b", 0, ["pretrain:a"]), job("pretrain:a", 0), job("pretrain:bad", 3),
            job("probes:c", 0, ["pretrain:bad"]), job("probes:d", 1, ["pretrain:b"])]
    study.execute(jobs, Runner(tmp_path / "runs", "local", jobs=2, poll_s=0.05))
    states = {j.name: j.state for j in jobs}
    assert states == {"pretrain:b": "ok", "pretrain:a": "ok", "pretrain:bad": "failed", "probes:c": "skipped",
                      "probes:d": "ok"}  # run_all's exit 1 (a task failed) is recorded in the results, not fatal
    assert "probes:c skipped: pretrain:bad did not succeed" in capsys.readouterr().out


@pytest.mark.slow  # 13 short subprocesses (pretraining, run_all, kNN, report): ~1 CPU-minute
def test_study_smoke_tiny(synthetic_root, tmp_path, capsys):
    """The whole pipeline on tiny data: 2 arms x 2 seeds, 1 epoch, one probe; then a resumed re-run does nothing."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"scale": "demo", "vars": {"data": str(synthetic_root)}, "tasks": [
        {"name": "knn_color", "task": "knn", "args": {"data": "{data}/classification/color"}}]}))
    runs, report = tmp_path / "runs", tmp_path / "report"
    argv = ["--preset", "tiny", "--data", str(synthetic_root), "--runs", str(runs), "--out", str(tmp_path / "out"),
            "--report", str(report), "--suite", str(suite), "--epochs", "1", "--seeds", "0", "1",
            "--arms", "vicreg_matched", "mast", "--set", "optim.batch_size=32", "--set", "data.num_workers=0",
            "--set", "data.heldout_pairs=16", "--set", "model.expander=[32,32]", "--set", "knn.root=null"]
    assert study.main(argv) == 0
    out = capsys.readouterr().out
    assert "Expected duration" in out and "8 jobs" in out
    matched = yaml.safe_load((runs / "study_vicreg_matched_s1" / "config.yaml").read_text())
    assert matched["method"] == "vicreg" and str(runs / "study_mast_s1" / "metrics.jsonl") in matched["loss"]["inv_coeff_source"]
    assert 0 < matched["loss"]["inv_coeff"] <= 25
    rows = list(csv.DictReader((report / "results.csv").open()))
    assert {(r["arm"], r["seed"]) for r in rows} == {("mast", "0"), ("mast", "1"), ("vicreg_matched", "0"),
                                                     ("vicreg_matched", "1")}
    diffs = list(csv.DictReader((report / "differences.csv").open()))
    assert [(d["comparison"], d["n_seeds"]) for d in diffs] == [("mast-vicreg_matched", "2")]
    summary = (report / "summary.md").read_text()
    assert "kNN color: " in summary and "over 2 paired seeds" in summary
    learned = list(csv.DictReader((report / "learned.csv").open()))
    assert len(learned) == 2 * 6 and all(0 < float(r["w_mean_heldout"]) <= 1 for r in learned)
    index = (report / "index.md").read_text()
    assert "## What MAST learned" in index and (report / "differences.png").is_file()
    assert study.main([*argv, "--plan"]) == 0  # resumable: every run and probe is kept
    plan = capsys.readouterr().out
    assert "0 pretraining runs and 0 probe suites to run" in plan and "pending" not in plan
