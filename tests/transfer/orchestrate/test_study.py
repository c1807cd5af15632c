"""``make study`` (transfer/orchestrate/study.py) and its report (reports/study_report.py, reports/study_runs.py)."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from reports import compare, study_report
from reports.study_report import arm_and_seed, study_results
from synthetic_state import save_state
from transfer.orchestrate import run_all, suite_jobs, study
from plumbing.jobs import Runner
from transfer.orchestrate.resolve import Checkpoint
from transfer.probes.cli import _save_scores, record_scores
from transfer.records import TaskRun, append_jsonl
from transfer.stats import difference_interval
from transfer.orchestrate.suite import TaskSpec

N_ITEMS = 200
#: arm -> (accuracy level per seed, mean w over the last epoch or None): MAST is 20 points above VICReg
TINY = {"vicreg": ([0.50, 0.55], None), "mast_unc_none": ([0.52, 0.56], 0.69), "mast": ([0.70, 0.75], 0.28)}


def _tiny_study(root: Path, arms: dict = TINY, probe: tuple[str, str, str] = ("knn_color", "knn", "top1_k20")
                ) -> tuple[Path, Path, dict]:
    """A study of 3 arms x 2 seeds, one probe (kNN color), written the way the study writes it: a
    TaskRun with the probes' per-item scores, finished and appended by run_all, one results.jsonl
    per checkpoint; each run folder has its config.yaml and metrics.jsonl (and mast_state.pth for MAST)."""
    truth = np.random.default_rng(0).random(N_ITEMS)
    scores = {}
    task_name, task_type, metric = probe
    for arm, (levels, w) in arms.items():
        for seed, level in enumerate(levels):
            name = f"{arm}_s{seed}"
            run = root / "pretrain" / f"study_{name}"
            run.mkdir(parents=True)
            method = "vicreg" if arm.startswith("vicreg") else "mast"
            (run / "config.yaml").write_text(yaml.safe_dump({"method": method, "seed": seed, "loss": {"inv_coeff": 25.0}}))
            lines = [{"step": s, "epoch": s // 2, "w_mean": (w or 1.0) * (0.5 if s < 2 else 1.0),
                      "w_eff": (w or 1.0) / 2} for s in range(4)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) if w else "")
            if method == "mast":
                save_state(run / "mast_state.pth", dim=16, pairs=64, seed=seed)
            scores[(arm, seed)] = (truth < level).astype(float)
            out = root / "transfer" / name
            task_dir = out / name / task_name
            with TaskRun(task_type, "synthetic/color", "demo", task_dir, None) as task:
                record_scores(task, metric, scores[(arm, seed)], "test images")
                _save_scores(task)
            ckpt = Checkpoint(name, run / "backbone.pth", f"{seed:02d}{arm}".ljust(64, "0"), "resnet18", method, False,
                              pretrain_seed=seed)
            job = suite_jobs.Job(ckpt, TaskSpec(task_name, task_type, {"data": "d/color"}, "demo"), task_dir)
            (task_dir / "run_all.log").write_text("")
            append_jsonl(out / "results.jsonl", suite_jobs.finish(job, suite_jobs.Outcome(job.key, 0), root=out))
    return root / "transfer", root / "pretrain", scores


# --- the report -------------------------------------------------------------------------------------------
def test_the_study_report_is_built_through_the_shared_statistics_path(tmp_path):
    results_dir, runs_dir, scores = _tiny_study(tmp_path)
    out = tmp_path / "report"
    study_report.write_report(results_dir, runs_dir, out)

    results = study_results(results_dir)
    assert results.names == ["vicreg", "mast_unc_none", "mast"] and results.n_seeds("mast") == 2
    arms = {r["arm"]: r for r in csv.DictReader((out / "arms.csv").open())}
    stat = compare.group_stat(results, "mast", "knn_color", "top1_k20")
    assert float(arms["mast"]["mean"]) == pytest.approx(100 * np.mean([scores[("mast", s)].mean() for s in (0, 1)]), abs=1e-3)
    assert (float(arms["mast"]["lo"]), float(arms["mast"]["hi"])) == pytest.approx((stat.lo, stat.hi), abs=1e-3)
    diffs = {d["comparison"]: d for d in csv.DictReader((out / "differences.csv").open())}
    expected = difference_interval([scores[("mast", s)] for s in (0, 1)], [scores[("vicreg", s)] for s in (0, 1)],
                                   seed=0, paired_seeds=True)  # the demo report's interval, paired by seed
    d = diffs["mast-vicreg"]
    assert (float(d["delta_lo"]), float(d["delta_hi"])) == pytest.approx((100 * expected.lo, 100 * expected.hi), abs=1e-3)
    assert d["excludes_zero"] == "True" and d["paired_seeds"] == "True" and d["n_seeds"] == "2"
    assert "mast-vicreg_matched" not in diffs  # no such arm in this study

    summary = (out / "summary.md").read_text()
    assert "kNN color: MAST is higher than VICReg (+" in summary and "over 2 paired seeds" in summary
    assert "hierarchical bootstrap" in summary and "t-interval" not in summary
    confound = next(line for line in summary.splitlines() if line.startswith("Reading the ablation"))
    assert "0.52" in confound and "0.21" in confound and "confounded" in confound  # 0.75 w: the window is all 4 steps
    index = (out / "index.md").read_text()
    for section in ("## Summary (generated)", "## Per arm", "## Differences A − B", "## Per seed",
                    "## What MAST learned"):
        assert section in index
    assert (out / "differences.png").is_file() and (out / "arms.png").is_file()
    learned = list(csv.DictReader((out / "learned.csv").open()))
    assert {r["run"] for r in learned} == {"mast_unc_none_s0", "mast_unc_none_s1", "mast_s0", "mast_s1"}


def test_the_claims_verdicts_read_the_tied_control_and_its_own_matched_control(tmp_path):
    """(a) holds when MAST beats tied masks on a style probe; (b) does not when tied equals its own matched control."""
    arms = {"mast": ([0.75, 0.8], 0.2), "mast_tied": ([0.55, 0.6], 0.3), "vicreg_matched_tied": ([0.55, 0.6], None)}
    results_dir, runs_dir, _ = _tiny_study(tmp_path, arms, ("linear_color", "linear", "top1"))
    out = tmp_path / "report"
    study_report.write_report(results_dir, runs_dir, out)
    results = study_results(results_dir)
    assert results.names == ["mast", "mast_tied", "vicreg_matched_tied"]
    assert study_report.claim_verdicts(results) == {"a": True, "b": False, "c": None}  # no content probe here
    diffs = {d["comparison"] for d in csv.DictReader((out / "differences.csv").open())}
    assert diffs == {"mast-mast_tied", "mast_tied-vicreg_matched_tied"}
    summary = (out / "summary.md").read_text()
    assert "(a) per-dimension relief adds to per-augmentation relief: **holds** (MAST − MAST (tied masks): " \
           "linear color +19.0 [+13.5, +24.5] points)" in summary  # the verdict names the differences it read
    assert "## Verdicts (stated in the code before the run; generated)" in (out / "index.md").read_text()
    assert "(b) per-pair δ weighting adds to uniform relief: **does not hold**" in summary
    assert "linear color: MAST is higher than MAST (tied masks)" in summary
    learned = {r["run"]: r for r in csv.DictReader((out / "learned.csv").open())}
    assert float(learned["mast_tied_s0"]["w_eff_train"]) == pytest.approx(0.15)


def test_plan_gives_every_mast_type_arm_its_own_matched_control(tmp_path, capsys):
    argv = ["--plan", "--preset", "tiny", "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
            "--out", str(tmp_path / "out"), "--report", str(tmp_path / "report"), "--seeds", "0", "1"]
    assert study.main(argv) == 0
    plan = capsys.readouterr().out
    assert "7 arms x 2 seeds" in plan and "14 pretraining runs" in plan
    for control, source in study.MATCHED_SOURCE.items():
        for seed in (0, 1):
            line = next(x for x in plan.splitlines() if f"pretrain:{control}_s{seed} " in x)
            assert line.rstrip().endswith(f"after ['pretrain:{source}_s{seed}']"), line
    args = study.build_parser().parse_args(argv[1:])
    jobs = {j.key: j for j in study.plan_jobs(args, [*study.STUDY_OVERRIDES, "optim.epochs=1"])}
    cmd = jobs["pretrain:vicreg_matched_unc_none_s1"].cmd
    assert f"loss.inv_coeff=auto:{tmp_path / 'runs' / 'study_mast_unc_none_s1'}" in cmd
    with pytest.raises(SystemExit, match="vicreg_matched_tied needs the mast_tied arm"):
        study.main([*argv, "--arms", "mast", "vicreg_matched_tied"])


def test_a_matched_run_of_the_older_rule_is_not_kept(tmp_path, capsys):
    old = tmp_path / "runs" / "study_vicreg_matched_s0"
    old.mkdir(parents=True)
    (old / "config.yaml").write_text(yaml.safe_dump({"method": "vicreg", "loss": {
        "inv_coeff": 6.5, "inv_coeff_source": "auto: 25 x mean w_mean 0.26 over epoch 6 (39 logged steps)"}}))
    (old / "mast_state.pth").write_bytes(b"")
    (old / "backbone.pth").write_bytes(b"")
    argv = ["--preset", "tiny", "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
            "--out", str(tmp_path / "out"), "--report", str(tmp_path / "report"), "--seeds", "0",
            "--arms", "mast", "vicreg_matched"]
    assert study.main([*argv, "--plan"]) == 0
    assert "stale    pretrain:vicreg_matched_s0" in capsys.readouterr().out
    assert study.main(argv) == 2
    assert "was made by an older rule" in capsys.readouterr().err
    source = tmp_path / "runs" / "study_mast_s0"  # a finished MAST run of before issue 35: no w_eff logged
    source.mkdir()
    (source / "config.yaml").write_text(yaml.safe_dump({"method": "mast"}))
    (source / "metrics.jsonl").write_text(json.dumps({"step": 1, "epoch": 1, "w_mean": 0.3}) + "\n")
    (source / "mast_state.pth").write_bytes(b"")
    (source / "backbone.pth").write_bytes(b"")
    assert study.main([*argv, "--plan"]) == 0
    assert "stale    pretrain:mast_s0" in capsys.readouterr().out


def test_the_report_shows_the_latest_record_and_ignores_other_checkpoints(tmp_path):
    results_dir, runs_dir, _ = _tiny_study(tmp_path)
    rerun = json.loads((results_dir / "vicreg_s0" / "results.jsonl").read_text().splitlines()[0])
    rerun.update(status="failed", error="boom")  # a newer failed run of the same task and config
    append_jsonl(results_dir / "vicreg_s0" / "results.jsonl", rerun)
    append_jsonl(results_dir / "vicreg_s0" / "results.jsonl", dict(rerun, name="random_init", status="ok"))
    results = study_results(results_dir)
    assert results.names == ["vicreg", "mast_unc_none", "mast"]
    assert [r["status"] for r in results.seeds("vicreg", "knn_color")] == ["failed", "ok"]  # the shared rule
    assert compare.group_stat(results, "vicreg", "knn_color", "top1_k20").n_seeds == 1


def test_arm_and_seed_reads_study_checkpoint_names():
    assert arm_and_seed("mast_unc_none_s12") == ("mast_unc_none", 12)
    assert arm_and_seed("vicreg_matched_s0") == ("vicreg_matched", 0)
    assert arm_and_seed("random_init") is None and arm_and_seed("simclr_s0") is None and arm_and_seed("mast_sx") is None


def test_study_suite_holds_exactly_the_reported_tasks():
    from transfer.orchestrate.suite import load_suite

    suite = load_suite(str(study.SUITE))
    assert {t.name for t in suite.tasks} == {task for task, _, _ in study_report.TASKS}
    assert {t.task for t in suite.tasks} == {"knn", "linear", "fewshot"}  # frozen-feature probes only


# --- orchestration ---------------------------------------------------------------------------------------
def test_execute_runs_dependencies_first_and_skips_dependents_of_a_failure(tmp_path, capsys):
    def job(name, code, deps=()):
        return study.study_job(name, [sys.executable, "-c", f"raise SystemExit({code})"], tmp_path / f"{name}.log", list(deps))
    jobs = [job("pretrain:b", 0, ["pretrain:a"]), job("pretrain:a", 0), job("pretrain:bad", 3),
            job("probes:c", 0, ["pretrain:bad"]), job("probes:d", 1, ["pretrain:b"])]
    study.execute(jobs, Runner(tmp_path / "runs", "local", jobs=2, poll_s=0.05))
    states = {j.key: j.state for j in jobs}
    assert states == {"pretrain:b": "ok", "pretrain:a": "ok", "pretrain:bad": "failed", "probes:c": "skipped",
                      "probes:d": "ok"}  # run_all's exit 1 (a task failed) is recorded in the results, not fatal
    assert "probes:c skipped: pretrain:bad did not succeed" in capsys.readouterr().out


@pytest.mark.slow  # 13 short subprocesses (pretraining, run_all, kNN, report): ~1 CPU-minute
def test_study_smoke_tiny(synthetic_root, tmp_path, capsys):
    """The whole pipeline on tiny data: 4 arms x 2 seeds (MAST, tied masks, each one's own matched control), 1 epoch,
    one probe; then a resumed re-run does nothing."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"scale": "demo", "vars": {"data": str(synthetic_root)}, "tasks": [
        {"name": "knn_color", "task": "knn", "args": {"data": "{data}/classification/color"}}]}))
    runs, report = tmp_path / "runs", tmp_path / "report"
    argv = ["--preset", "tiny", "--data", str(synthetic_root), "--runs", str(runs), "--out", str(tmp_path / "out"),
            "--report", str(report), "--suite", str(suite), "--epochs", "1", "--seeds", "0", "1",
            "--arms", "vicreg_matched", "mast", "mast_tied", "vicreg_matched_tied", "--set", "optim.batch_size=32", "--set", "data.num_workers=0",
            "--set", "data.heldout_pairs=16", "--set", "model.expander=[32,32]", "--set", "knn.root=null"]
    assert study.main(argv) == 0
    out = capsys.readouterr().out
    assert "Expected duration" in out and "16 jobs" in out
    matched = yaml.safe_load((runs / "study_vicreg_matched_s1" / "config.yaml").read_text())
    assert matched["method"] == "vicreg" and str(runs / "study_mast_s1" / "metrics.jsonl") in matched["loss"]["inv_coeff_source"]
    assert 0 < matched["loss"]["inv_coeff"] <= 25 and "w_eff" in matched["loss"]["inv_coeff_source"]
    tied = yaml.safe_load((runs / "study_vicreg_matched_tied_s1" / "config.yaml").read_text())["loss"]
    assert str(runs / "study_mast_tied_s1" / "metrics.jsonl") in tied["inv_coeff_source"]  # its own arm's run
    assert tied["inv_coeff"] != matched["loss"]["inv_coeff"]
    assert yaml.safe_load((runs / "study_mast_tied_s0" / "config.yaml").read_text())["model"]["masks"] == "tied"
    rows = list(csv.DictReader((report / "results.csv").open()))
    assert {(r["arm"], r["seed"]) for r in rows} == {(a, s) for a in ("mast", "vicreg_matched", "mast_tied",
                                                                      "vicreg_matched_tied") for s in "01"}
    diffs = list(csv.DictReader((report / "differences.csv").open()))
    assert [(d["comparison"], d["n_seeds"]) for d in diffs] == [
        ("mast-vicreg_matched", "2"), ("mast-mast_tied", "2"), ("mast_tied-vicreg_matched_tied", "2")]
    summary = (report / "summary.md").read_text()
    assert "kNN color: " in summary and "over 2 paired seeds" in summary
    learned = list(csv.DictReader((report / "learned.csv").open()))
    assert len(learned) == 4 * 6 and all(0 < float(r["w_mean_heldout"]) <= 1 for r in learned)
    assert all(r["mask_differentiation"] == "" for r in learned if r["run"].startswith("mast_tied"))  # ranks nothing
    assert "(a) per-dimension relief adds to per-augmentation relief: not measured" in summary  # no linear probe
    index = (report / "index.md").read_text()
    assert "## What MAST learned" in index and (report / "differences.png").is_file()
    assert study.main([*argv, "--plan"]) == 0  # resumable: every run and probe is kept
    plan = capsys.readouterr().out
    assert "0 pretraining runs and 0 probe suites to run" in plan and "pending" not in plan
