"""run_all re-submission: --resume only for a detection/segmentation task the cluster ended, same config,
with a checkpoint of its own in its folder (transfer/orchestrate/task_resume.py).

The earlier attempt's records are real: written by run_all's own ``finish`` from a job outcome.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from transfer.backbones.resnet.load import build_resnet
from transfer.orchestrate import run_all, suite_jobs
from plumbing.jobs import JobSpec, Outcome
from transfer.orchestrate.suite import load_suite

REPO = Path(__file__).resolve().parents[3]
DEMO = str(REPO / "detectron_configs" / "demo_synthetic_R_18_FPN.yaml")
TINY = ["SOLVER.WARMUP_ITERS", "1", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "2",
        "TEST.PRECISE_BN.ENABLED", "False", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "64", "SOLVER.MAX_ITER", "4"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pretrain") / "r18run"
    run.mkdir()
    torch.manual_seed(0)
    torch.save(build_resnet("resnet18").state_dict(), run / "backbone.pth")
    (run / "config.yaml").write_text("method: vicreg\n")
    return run / "backbone.pth"


def _jobs(ckpt: Path, tmp_path: Path, tasks: list[dict]) -> list[suite_jobs.Job]:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"scale": "demo", "tasks": tasks}, sort_keys=False))
    ckpts = run_all.resolve_checkpoints([str(ckpt)], [])
    return suite_jobs.plan(ckpts, load_suite(str(path)), tmp_path / "out", force=False)[0]


def _resubmitted(job: suite_jobs.Job, force: bool = False) -> list[str]:
    """What run_all would run now: prepare() then the spec's command line (as the job runner does)."""
    spec = JobSpec(job.key, job.label, suite_jobs.job_command(job), job.out_dir / "run_all.log")
    suite_jobs.prepare(job, spec, force)
    return spec.cmd


def _earlier_attempt(job: suite_jobs.Job, outcome: Outcome, pointer: str | None) -> None:
    job.out_dir.mkdir(parents=True, exist_ok=True)
    if pointer:
        (job.out_dir / pointer).parent.mkdir(parents=True, exist_ok=True)
        (job.out_dir / pointer).write_text("model_0000001.pth")
    suite_jobs.finish(job, outcome)  # writes the earlier attempt's record.json, as collecting the job does


DET = {"name": "det", "task": "detection", "args": {"config": DEMO}}
SEG = {"name": "seg", "task": "segmentation"}
ENDED = dict(exit_code=None, cluster_state="PREEMPTED", job_id="41")


@pytest.mark.parametrize("task,pointer", [(DET, "seed_0/last_checkpoint"), (SEG, "work/last_checkpoint")])
def test_a_task_the_cluster_ended_resumes_from_its_checkpoint(ckpt, tmp_path, task, pointer):
    job = _jobs(ckpt, tmp_path, [task])[0]
    _earlier_attempt(job, Outcome(job.key, **ENDED), pointer)
    cmd = _resubmitted(job)
    assert cmd[-1] == "--resume" and cmd[:-1] == suite_jobs.job_command(job)
    assert (job.out_dir / "record.prev.json").is_file() and not (job.out_dir / "record.json").exists()
    record = suite_jobs.finish(job, Outcome(job.key, 0))  # the resumed job, collected
    assert record["resumed_from"]["cause"] == "PREEMPTED" and record["resumed_from"]["slurm_job_id"] == "41"
    assert record["resumed_from"]["checkpoints"] == [str(job.out_dir / Path(pointer).parent / "model_0000001.pth")]


def test_a_local_timeout_resumes_too(ckpt, tmp_path):
    job = _jobs(ckpt, tmp_path, [DET])[0]
    _earlier_attempt(job, Outcome(job.key, -15, timed_out=True), "seed_0/last_checkpoint")
    assert _resubmitted(job)[-1] == "--resume"


@pytest.mark.parametrize("case", ["force", "own_error", "no_checkpoint", "other_config", "probe", "ok"])
def test_everything_else_starts_over(ckpt, tmp_path, case):
    task = {"name": "k", "task": "knn"} if case == "probe" else DET
    job = _jobs(ckpt, tmp_path, [task])[0]
    outcome = {"own_error": Outcome(job.key, 1), "ok": Outcome(job.key, 0)}.get(case, Outcome(job.key, **ENDED))
    _earlier_attempt(job, outcome, None if case == "no_checkpoint" else "seed_0/last_checkpoint")
    (job.out_dir / "resume.json").write_text("{}")  # an older submission's decision: replaced
    if case == "other_config":
        job = _jobs(ckpt, tmp_path, [dict(DET, args={"config": DEMO, "seeds": [1]})])[0]
    cmd = _resubmitted(job, force=case == "force")
    assert "--resume" not in cmd and cmd == suite_jobs.job_command(job)
    assert not (job.out_dir / "resume.json").exists()
    assert suite_jobs.finish(job, Outcome(job.key, 0))["resumed_from"] is None


@pytest.mark.slow
def test_run_all_resubmits_a_preempted_detection_with_resume(ckpt, tmp_path, synthetic_root, capsys):
    """End to end: a detection stopped after 2 of 4 iterations (its checkpoint saved), recorded as
    preempted; the same run_all command continues it from iteration 2 and records that."""
    from transfer.detection import main as detection_main

    args = {"config": DEMO, "data_root": str(synthetic_root), "save_model": True, "threads": 1}
    det = {"name": "det", "task": "detection", "args": args, "extra_args": TINY}
    job = _jobs(ckpt, tmp_path, [det])[0]
    stopped = suite_jobs.job_command(job)[3:] + ["SOLVER.MAX_ITER", "2"]  # the same task, ended after 2 iterations
    assert detection_main(stopped) == 0
    _earlier_attempt(job, Outcome(job.key, **ENDED), None)
    code = run_all.main(["--ckpt", str(ckpt), "--suite", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"),
                         "--no-report"])
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert code == 0 and records[-1]["status"] == "ok", records[-1].get("error")
    assert records[-1]["resumed_from"]["cause"] == "PREEMPTED"
    assert records[-1]["resumed"]["0"].startswith("resumed from model_final.pth at iteration 2 of 4")
    assert "--resume" in (job.out_dir / "run_all.log").read_text().splitlines()[0]
