"""transfer/run_all.py: bad input refused in one line; failures recorded; kill + re-run resumes.

The end-to-end test drives the real few-shot probe (transfer.probes.fewshot) on the tiny synthetic data,
with a real ResNet-18 checkpoint, in subprocesses exactly as a user would run them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from transfer.orchestrate import run_all, suite_jobs
from transfer.backbones.resnet.load import build_resnet
from transfer.orchestrate.suite import TASK_MODULES, SuiteError, load_suite

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A pretraining-run-like folder: backbone.pth + backbone_init.pth + config.yaml (method vicreg)."""
    run = tmp_path_factory.mktemp("pretrain") / "r18run"
    run.mkdir()
    torch.manual_seed(0)
    state = build_resnet("resnet18").state_dict()
    torch.save(state, run / "backbone.pth")
    torch.save(state, run / "backbone_init.pth")
    (run / "config.yaml").write_text("method: vicreg\n")
    return run / "backbone.pth"


def _suite(path: Path, tasks: list[dict], **top) -> Path:
    path.write_text(yaml.safe_dump({"scale": "demo", **top, "tasks": tasks}, sort_keys=False))
    return path


def _one_line_error(capsys, code: int, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("run_all: error:"), err
    for needle in needles:
        assert needle in err, err


def test_bad_input_is_refused_in_one_line(ckpt, tmp_path, capsys):
    good = _suite(tmp_path / "s.yaml", [{"task": "knn", "args": {"data": "x"}}])
    out = ["--out", str(tmp_path / "out"), "--no-report", "--suite", str(good)]
    _one_line_error(capsys, run_all.main(["--ckpt", str(tmp_path / "nope.pth"), *out]), "nope.pth", "no such file")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    _one_line_error(capsys, run_all.main(["--ckpt", str(tmp_path / "notes.pth"), *out]), "notes.pth")
    _one_line_error(capsys, run_all.main(["--ckpt", str(ckpt), "--ckpt", str(ckpt), *out]), "--name r18run", "same checkpoint")
    _one_line_error(capsys, run_all.main(["--ckpt", str(ckpt), "--ckpt", str(ckpt), "--name", "a", "--name", "a", *out]),
                    "--name a", "same checkpoint")
    _one_line_error(capsys, run_all.main(["--ckpt", str(ckpt), "--baseline", "zzz", *out]), "--baseline zzz")
    bad_task = _suite(tmp_path / "t.yaml", [{"task": "knn"}, {"task": "clasification", "args": {}}])
    _one_line_error(capsys, run_all.main(["--ckpt", str(ckpt), *out, "--suite", str(bad_task)]), "'clasification'")
    bad_key = _suite(tmp_path / "k.yaml", [{"name": "kk", "task": "knn", "arg": {}}])
    _one_line_error(capsys, run_all.main(["--ckpt", str(ckpt), *out, "--suite", str(bad_key)]), "(kk)", "'arg'")
    dup = _suite(tmp_path / "d.yaml", [{"task": "knn"}, {"task": "knn"}])
    _one_line_error(capsys, run_all.main(["--ckpt", str(ckpt), *out, "--suite", str(dup)]), "['knn']")
    _one_line_error(capsys, run_all.main(["--ckpt", str(ckpt), *out, "--var", "nodata=1"]), "nodata")
    _one_line_error(capsys, run_all.main(["--ckpt", str(ckpt), *out, "--suite", "nosuchsuite"]), "nosuchsuite")
    for name in (".", ".."):
        _one_line_error(capsys, run_all.main(["--ckpt", str(ckpt), "--name", name, *out]), f"--name {name!r}")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"tasks: []\nvars: {x: \xe9}\n")
    _one_line_error(capsys, run_all.main(["--ckpt", str(ckpt), *out[:-2], "--suite", str(latin)]), "not UTF-8")
    for top, needle in (({"vars": ["a", "b"]}, "'vars' must be a mapping"),):
        bad = _suite(tmp_path / "v.yaml", [{"task": "knn", "args": {"data": "x"}}], **top)
        _one_line_error(capsys, run_all.main(["--ckpt", str(ckpt), *out[:-2], "--suite", str(bad)]), needle)
    for entry, needle in (({"timeout_min": True}, "timeout_min True"), ({"extra_args": ["--out=/elsewhere"]}, "--out")):
        bad = _suite(tmp_path / "e.yaml", [{"task": "knn", "args": {"data": "x"}, **entry}])
        _one_line_error(capsys, run_all.main(["--ckpt", str(ckpt), *out[:-2], "--suite", str(bad)]), needle)
    assert not (tmp_path / "out").exists()  # nothing ran
    (tmp_path / "afile").write_text("x")
    _one_line_error(capsys, run_all.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "afile"), "--no-report",
                                          "--suite", str(good)]), "not a folder")


def test_a_second_run_all_on_the_same_out_is_refused(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import time; from plumbing.lock import FolderLock; "
                               f"held = FolderLock({str(out)!r}, 'run_all'); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        suite = _suite(tmp_path / "s.yaml", [{"task": "knn", "args": {"data": "x"}}])
        code = run_all.main(["--ckpt", str(ckpt), "--out", str(out), "--no-report", "--suite", str(suite)])
        _one_line_error(capsys, code, f"PID {holder.pid}", "in use by another run_all")
        assert not (out / "results.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


def test_shipped_suites_load_and_name_their_variables():
    demo, paper = load_suite("demo"), load_suite("paper", {"datasets": "/d"})
    assert {t.task for t in demo.tasks} == {"knn", "linear", "fewshot", "detection", "segmentation", "classification"}
    assert all(t.scale == "paper" for t in paper.tasks)
    assert any(t.args.get("data") == "/d/fc100" for t in paper.tasks)
    with pytest.raises(SuiteError, match="--tasks knnn"):
        load_suite("demo", tasks=["knnn"])
    assert [t.task for t in load_suite("demo", tasks=["fewshot"]).tasks] == ["fewshot"]


@pytest.mark.parametrize("task, key", [("knn", "temprature"), ("linear", "max_iters"), ("fewshot", "shot"),
                                       ("detection", "num_gpu"), ("segmentation", "thread")])
def test_misspelled_task_option_is_refused_when_the_suite_loads(tmp_path, task, key):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"scale": "demo", "tasks": [{"name": "t", "task": task, "args": {key: 1}}]}))
    with pytest.raises(SuiteError, match=f"args key '{key}' is not an option of {TASK_MODULES[task]} "):
        load_suite(str(suite))


def test_plan_skips_done_retries_failed_and_keeps_the_floor_to_probes(ckpt, tmp_path):
    suite = _suite(tmp_path / "s.yaml", [
        {"name": "a", "task": "knn", "args": {"data": "x"}},
        {"name": "b", "task": "knn", "args": {"data": "y"}},
        {"name": "det", "task": "detection", "checkpoints": "trained"},
    ])
    s = load_suite(str(suite))
    ckpts = run_all.resolve_checkpoints([str(ckpt), str(ckpt.with_name("backbone_init.pth"))], [])
    assert [c.name for c in ckpts] == ["r18run", "r18run_init"] and ckpts[1].untrained
    out = tmp_path / "out"
    todo, done = suite_jobs.plan(ckpts, s, out, force=False)
    assert [(j.ckpt.name, j.spec.name) for j in todo] == [
        ("r18run", "a"), ("r18run", "b"), ("r18run", "det"), ("r18run_init", "a"), ("r18run_init", "b")]
    out.mkdir()
    key = {"name": "r18run", "ckpt_sha256": ckpts[0].sha256}
    lines = [dict(key, status="ok", task_config_hash=s.tasks[0].config_hash),
             dict(key, status="failed", task_config_hash=s.tasks[1].config_hash)]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"name": "r18')
    with pytest.warns(UserWarning, match="corrupt line"):
        todo, done = suite_jobs.plan(ckpts, s, out, force=False)
    assert [(j.ckpt.name, j.spec.name) for j in done] == [("r18run", "a")]
    assert ("r18run", "b") in [(j.ckpt.name, j.spec.name) for j in todo]  # failed: retried
    with pytest.warns(UserWarning):
        assert len(suite_jobs.plan(ckpts, s, out, force=True)[0]) == 5


def test_a_shared_name_groups_seeds_each_with_its_own_folder(ckpt, tmp_path):
    torch.manual_seed(1)
    other = tmp_path / "seed1.pth"
    torch.save(build_resnet("resnet18").state_dict(), other)
    suite = load_suite(str(_suite(tmp_path / "s.yaml", [{"name": "a", "task": "knn", "args": {"data": "x"}}])))
    ckpts = run_all.resolve_checkpoints([str(ckpt), str(other), str(ckpt)], ["m", "m", "solo"])
    assert [(c.name, c.seed_index, c.shared) for c in ckpts] == [("m", 0, True), ("m", 1, True), ("solo", 0, False)]
    out = tmp_path / "out"
    todo, _ = suite_jobs.plan(ckpts, suite, out, force=False)
    dirs = [j.out_dir for j in todo]
    assert dirs == [out / "m" / ckpts[0].sha256[:8] / "a", out / "m" / ckpts[1].sha256[:8] / "a", out / "solo" / "a"]
    out.mkdir()  # seed 0 done: only seed 1 (another sha256 under the same name) and solo still run
    done = {"name": "m", "ckpt_sha256": ckpts[0].sha256, "status": "ok", "task_config_hash": suite.tasks[0].config_hash}
    (out / "results.jsonl").write_text(json.dumps(done) + "\n")
    todo, done_jobs = suite_jobs.plan(ckpts, suite, out, force=False)
    assert [j.ckpt.label for j in done_jobs] == ["m#0"] and [j.ckpt.label for j in todo] == ["m#1", "solo"]


def test_seeds_are_numbered_by_the_pretraining_seed_not_the_command_line_order(tmp_path):
    paths = []
    for seed in (2, 0, 1):  # given out of order on the command line
        run = tmp_path / f"mast_s{seed}"
        run.mkdir()
        torch.manual_seed(seed)
        torch.save(build_resnet("resnet18").state_dict(), run / "backbone.pth")
        (run / "config.yaml").write_text(f"method: mast\nseed: {seed}\n")
        paths.append(str(run / "backbone.pth"))
    ckpts = run_all.resolve_checkpoints(paths, ["mast"] * 3)
    assert [(c.pretrain_seed, c.seed_index) for c in ckpts] == [(2, 2), (0, 0), (1, 1)]
    (tmp_path / "mast_s1" / "config.yaml").write_text("method: mast\n")  # one seed unknown: command-line order
    ckpts = run_all.resolve_checkpoints(paths, ["mast"] * 3)
    assert [(c.pretrain_seed, c.seed_index) for c in ckpts] == [(2, 0), (0, 1), (None, 2)]


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _children_of(marker: str) -> list[str]:
    return [c for p in Path("/proc").glob("[0-9]*") if marker in (c := _cmdline(p)) and "transfer.probes.fewshot" in c]


def test_a_task_that_dies_without_a_record_gets_a_failed_one(ckpt, tmp_path):
    spec = load_suite(str(_suite(tmp_path / "s.yaml", [{"name": "t", "task": "knn"}]))).tasks[0]
    c = run_all.resolve_checkpoints([str(ckpt)], ["r18"])[0]
    job = suite_jobs.Job(c, spec, tmp_path / "out" / "r18" / "t")
    job.out_dir.mkdir(parents=True)
    (job.out_dir / "run_all.log").write_text("Traceback (most recent call last):\nMemoryError: boom\n")
    record = suite_jobs.finish(job, suite_jobs.Outcome(job.key, -9))
    assert record["status"] == "failed" and record["metrics"] == {}
    assert "exit code -9 without a record" in record["error"] and "MemoryError: boom" in record["error"]
    assert record["checkpoint"]["sha256"] == c.sha256 and record["task_config_hash"] == spec.config_hash


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_stops_cleanly(ckpt, tmp_path, monkeypatch, capsys, signum):
    """The running task is terminated, nothing is appended; exit 143 for SIGTERM, 130 for Ctrl-C (SIGINT)."""
    marker = f"import time; time.sleep(120)  # {tmp_path.name}"
    monkeypatch.setattr(suite_jobs.TaskSpec, "command", lambda self, python, ck, out: [python, "-c", marker])
    suite = _suite(tmp_path / "s.yaml", [{"name": "a", "task": "knn"}, {"name": "b", "task": "knn"}])
    def signal_once_running() -> None:  # the signal reaches a runner whose task is running (however loaded the machine)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not [p for p in Path("/proc").glob("[0-9]*") if marker in _cmdline(p)]:
            time.sleep(0.2)
        time.sleep(0.5)
        os.kill(os.getpid(), signum)

    sender = threading.Thread(target=signal_once_running, daemon=True)
    sender.start()
    # run_all owns its signals: even a caller that left SIGINT ignored (which task processes would inherit,
    # as an earlier in-process engine once left it in this test session) is stopped, and so are its tasks
    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = run_all.main(["--ckpt", str(ckpt), "--suite", str(suite), "--out", str(tmp_path / "out"), "--no-report"])
    finally:
        signal.signal(signal.SIGINT, inherited)
    sender.join(5)
    err = capsys.readouterr().err
    assert code == 128 + signum and "2 not" in err and "r18run/a" in err and "resume" in err, err
    assert not (tmp_path / "out" / "results.jsonl").exists()
    assert not [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).find(marker) >= 0]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_failures_are_recorded_and_a_killed_suite_resumes(ckpt, synthetic_root, tmp_path, capsys):
    probe = {"data": "{data}/classification/shape_color", "episodes": 10, "image_size": 32,
             "cache_dir": str(tmp_path / "cache"), "no_progress": True}
    suite = _suite(tmp_path / "suite.yaml", [
        {"name": "fs_1shot", "task": "fewshot", "args": {**probe, "shots": [1]}},
        {"name": "fs_2shot", "task": "fewshot", "args": {**probe, "shots": [2]}},
        {"name": "hangs", "task": "fewshot", "timeout_min": 0.001, "args": {**probe, "shots": [3]}},
        {"name": "no_dataset", "task": "fewshot", "args": {**probe, "data": "{data}/no/such/dataset"}},
    ], vars={"data": str(synthetic_root)})
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpt), "--name", "r18", "--suite", str(suite), "--out", str(out), "--no-report"]
    results = out / "results.jsonl"

    # 1. kill -9 run_all (run as a script path) as soon as the first task's record is in (the missing
    #    dataset is recorded before anything starts): its running task dies too
    first = subprocess.Popen([sys.executable, str(REPO / "transfer/run_all.py"), *args], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (results.is_file() and '"fs_1shot"' in results.read_text()) and first.poll() is None:
        assert time.monotonic() < deadline, "no record within 300 s"
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGKILL)
    log1 = first.communicate()[0]
    # the job notices its runner is gone within ~1 s (job_command polls it) and stops the task (SIGTERM,
    # 10 s grace): bounded, never a fixed sleep that a loaded machine outruns
    gone_by = time.monotonic() + 20
    while _children_of(str(out)) and time.monotonic() < gone_by:
        time.sleep(0.2)
    assert not _children_of(str(out)), "a task outlived the killed run_all by 20 s"
    before = _records(results)
    assert [(r["task_name"], r["status"]) for r in before] == [("no_dataset", "skipped"), ("fs_1shot", "ok")], log1
    with open(results, "a") as f:  # a writer killed mid-line
        f.write('{"name": "r18", "task_name": "fs_2shot", "sta')

    # 2. re-run: only what is missing runs; a hung task and a missing dataset are recorded, not fatal
    with pytest.warns(UserWarning, match="corrupt line"):
        code = run_all.main(args + ["--jobs", "2"])
    stdout = capsys.readouterr().out
    assert code == 1, stdout  # 1: a task failed
    assert "1 already done, 3 to run" in stdout, stdout
    by_task: dict[str, list[dict]] = {}
    for r in _records(results):
        by_task.setdefault(r["task_name"], []).append(r)
        assert r["name"] == "r18" and r["ckpt_sha256"] == r["checkpoint"]["sha256"] and r["task_config_hash"]
    assert [r["status"] for r in by_task["fs_1shot"]] == ["ok"]  # not re-run
    assert [r["status"] for r in by_task["fs_2shot"]] == ["ok"]
    assert set(by_task["fs_2shot"][0]["metrics"]) == {"acc_5way_2shot", "acc_5way_2shot_ci95"}
    assert [r["status"] for r in by_task["no_dataset"]] == ["skipped", "skipped"]  # checked again, never run
    assert "no/such/dataset" in by_task["no_dataset"][0]["error"]
    assert [r["status"] for r in by_task["hangs"]] == ["failed"] and "timed out" in by_task["hangs"][0]["error"]
    assert '"sta' in results.read_text()  # the corrupt line is kept, never lost
    assert "| checkpoint" in stdout and "fs_2shot" in stdout  # final summary table


def test_no_tensorboard_reaches_the_tasks_that_write_events(ckpt, tmp_path):
    """run_all --no-tensorboard: detection's and segmentation's own parsers see --no-tensorboard, other tasks
    get no unknown option, and the task's config hash (which ok records are matched on) stays the same."""
    from transfer.detection.runner import parse_args as detection_args
    from transfer.segmentation.runner import build_parser as segmentation_parser

    assert run_all.build_parser().parse_args(["--no-tensorboard"]).no_tensorboard
    (checkpoint,) = run_all.resolve_checkpoints([str(ckpt)], [], [])
    suite = load_suite("demo", {}, None, {}, False)
    parse = {"detection": detection_args, "segmentation": lambda argv: segmentation_parser().parse_args(argv)}
    assert set(parse) <= {t.task for t in suite.tasks} and set(parse) == set(suite_jobs.TENSORBOARD_TASKS)
    for spec in suite.tasks:
        on, off = (suite_jobs.Job(checkpoint, spec, tmp_path / spec.name, tensorboard=t) for t in (True, False))
        assert "--no-tensorboard" not in suite_jobs.job_command(on)
        assert ("--no-tensorboard" in suite_jobs.job_command(off)) == (spec.task in parse), spec.name
        if spec.task in parse:
            assert parse[spec.task](suite_jobs.job_command(on)[3:]).tensorboard
            assert not parse[spec.task](suite_jobs.job_command(off)[3:]).tensorboard


def test_a_report_that_cannot_be_built_exits_1_and_keeps_the_results(ckpt, tmp_path, capsys):
    """Every task skipped (no dataset) and --report at a file: the record is kept, the report line says how to
    rebuild it, and the exit status says something went wrong (it used to be 0)."""
    suite = _suite(tmp_path / "s.yaml", [{"task": "knn", "args": {"data": str(tmp_path / "absent")}}])
    blocker = tmp_path / "report"
    blocker.write_text("a file the report folder would need to be")
    out = tmp_path / "out"
    code = run_all.main(["--ckpt", str(ckpt), "--suite", str(suite), "--out", str(out), "--report", str(blocker)])
    err = capsys.readouterr().err
    assert code == 1 and "report not built" in err and "reports.build" in err, err
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
    assert blocker.read_text() == "a file the report folder would need to be"  # never overwritten
