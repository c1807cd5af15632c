"""--launcher slurm against a REAL one-node SLURM cluster (scripts/slurm_local.sh; no mocked sbatch).

The session fixture starts the cluster with the project's own script (installing Debian's slurm,
munge, slurmdbd and MariaDB packages when missing: root) and stops it at the end if it started it.
With CI=true these tests must run; elsewhere, without root, they skip with one line saying how.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_args
from transfer.orchestrate import run_all, suite_jobs
from transfer.backbones.resnet.load import build_resnet

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "slurm_local.sh"


@pytest.fixture(scope="session")
def slurm_cluster():
    """SLURM_CONF of a running local cluster (started here, and stopped at the end, if it was not up)."""
    ci = os.environ.get("CI") == "true"
    if os.geteuid() != 0:
        if ci:
            pytest.fail("CI=true: the SLURM tests need root to install and start scripts/slurm_local.sh")
        pytest.skip("SLURM tests need root: run them as root (the fixture runs scripts/slurm_local.sh start)")
    folder = Path(os.environ.get("MAST_SLURM_DIR", "/var/tmp/mast-slurm"))
    env = dict(os.environ, MAST_SLURM_DIR=str(folder))
    was_up = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True).returncode == 0
    if not was_up:
        out = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900)
        if out.returncode:
            message = f"scripts/slurm_local.sh start failed: {out.stderr.strip()[-400:]}"
            pytest.fail(message) if ci else pytest.skip(message)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(folder / "etc" / "slurm.conf")
    yield os.environ["SLURM_CONF"]
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    if not was_up:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> list[Path]:
    """Two pretraining-run-like folders with different ResNet-18 weights."""
    out = []
    for seed in (0, 1):
        run = tmp_path_factory.mktemp("pretrain") / f"r18_{seed}"
        run.mkdir()
        torch.manual_seed(seed)
        torch.save(build_resnet("resnet18").state_dict(), run / "backbone.pth")
        (run / "config.yaml").write_text(f"method: vicreg\nseed: {seed}\n")
        out.append(run / "backbone.pth")
    return out


def _suite(path: Path, tasks: list[dict], data: Path) -> Path:
    """A suite with a ``slurm:`` section for this CPU-only cluster."""
    path.write_text(yaml.safe_dump({"scale": "demo", "vars": {"data": str(data)},
                                    "slurm": {"cpu_only": True, "cpus_per_gpu": 1}, "tasks": tasks}))
    return path


def _records(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _squeue_state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()


KNN = {"task": "knn", "args": {"data": "{data}/classification/shape", "num_workers": 0}}


def test_bad_slurm_options_and_missing_sbatch_are_one_line(slurm_cluster, ckpts, synthetic_root, tmp_path, capsys,
                                                           monkeypatch):
    suite = _suite(tmp_path / "s.yaml", [{"name": "k", **KNN}], synthetic_root)
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpts[0]), "--suite", str(suite), "--out", str(out), "--no-report", "--launcher", "slurm"]
    code = run_all.main([*args, "--slurm-partition", "no_such_partition"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "sbatch" in err and "partition" in err.lower(), err
    assert _records(out) == []  # nothing recorded as failed
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    code = run_all.main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "sbatch is not on PATH" in err, err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_probes_through_slurm_equal_local(slurm_cluster, ckpts, synthetic_root, tmp_path, capsys):
    common = ["--ckpt", str(ckpts[0]), "--name", "a", "--ckpt", str(ckpts[1]), "--name", "b", "--suite", "demo",
              "--tasks", "knn", "--var", f"data={synthetic_root}", "--no-report", "--jobs", "2"]
    walls = {}
    for launcher in ("local", "slurm"):
        t0 = time.monotonic()
        extra = ["--slurm-cpu-only"] if launcher == "slurm" else []
        assert run_all.main([*common, "--out", str(tmp_path / launcher), "--launcher", launcher, *extra]) == 0
        walls[launcher] = time.monotonic() - t0
    stdout = capsys.readouterr().out
    metrics = {launcher: {(r["name"], r["task_name"]): r["metrics"] for r in _records(tmp_path / launcher)}
               for launcher in walls}
    assert len(metrics["local"]) == 6 and metrics["slurm"] == metrics["local"], stdout
    assert stdout.count("submitted: SLURM job") == 6
    print(f"wall time: local {walls['local']:.1f}s, slurm {walls['slurm']:.1f}s")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_classification_seed_group_through_slurm_equals_local(slurm_cluster, ckpts, synthetic_root, tmp_path, capsys):
    """The demo's 1 % twin (mmpretrain fine-tuning, a group of 2 seeds) through the job runner on the local cluster
    gives the local run's record to the bit: every metric, std and interval. The classification runner has no
    --deterministic (segmentation's): on a CPU nothing else varies: mmengine draws data order and crops from the
    seed, the suite entry pins one torch thread, and the demo config has no data workers."""
    task = "semisup_demo_imagenet_like_1pct"
    common = ["--ckpt", str(ckpts[0]), "--name", "a", "--suite", "demo", "--tasks", task, "--var",
              f"data={synthetic_root}", "--no-report"]
    walls = {}
    for launcher in ("local", "slurm"):
        t0 = time.monotonic()
        extra = ["--slurm-cpu-only"] if launcher == "slurm" else []
        assert run_all.main([*common, "--out", str(tmp_path / launcher), "--launcher", launcher, *extra]) == 0
        walls[launcher] = time.monotonic() - t0
    stdout = capsys.readouterr().out
    records = {launcher: _records(tmp_path / launcher) for launcher in walls}
    assert [len(r) for r in records.values()] == [1, 1] and stdout.count("submitted: SLURM job") == 1, stdout
    local, slurm = records["local"][0], records["slurm"][0]
    assert local["status"] == "ok" and local["seeds"] == [0, 1] and len(local["per_seed"]) == 2, local.get("error")
    for key in ("metrics", "metrics_std", "per_seed", "intervals"):
        assert slurm[key] == local[key], key
    for seed in (0, 1):  # and every validation image's hit, seed by seed
        a, b = (np.load(tmp_path / launcher / "a" / task / f"seed_{seed}" / "predictions.npz")
                for launcher in ("local", "slurm"))
        assert all(np.array_equal(a[m], b[m]) for m in ("top1", "top5"))
    print(f"wall time: local {walls['local']:.1f}s, slurm {walls['slurm']:.1f}s")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_no_wait_then_the_same_command_collects_without_submitting_twice(slurm_cluster, ckpts, synthetic_root,
                                                                          tmp_path, capsys):
    suite = _suite(tmp_path / "s.yaml", [{"name": "k1", **KNN}, {"name": "k2", **KNN}], synthetic_root)
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpts[0]), "--suite", str(suite), "--out", str(out), "--no-report", "--launcher", "slurm"]
    # a job id the cluster never knew (a lost job): submitted again, never counted as done
    todo, _ = suite_jobs.plan(run_all.resolve_checkpoints([str(ckpts[0])], []), run_all.load_suite(str(suite)), out, False)
    out.mkdir()
    (out / "jobs.json").write_text(json.dumps({"token": "0123456789ab", "jobs": {todo[1].key: {"job_id": "987654"}}}))
    assert run_all.main([*args, "--no-wait"]) == 0
    first = capsys.readouterr().out
    assert first.count("submitted: SLURM job") == 2 and "987654 is unknown to the cluster" in first, first
    assert set(json.loads((out / "jobs.json").read_text())["jobs"]) == {j.key for j in todo}
    assert run_all.main(args) == 0
    second = capsys.readouterr().out
    assert "submitted" not in second, second
    records = _records(out)
    assert sorted(r["task_name"] for r in records) == ["k1", "k2"] and {r["status"] for r in records} == {"ok"}
    assert json.loads((out / "jobs.json").read_text())["jobs"] == {}
    assert run_all.main(args) == 0 and "0 to run" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scancel_and_time_limit_are_recorded_with_their_cause_and_rerun(slurm_cluster, ckpts, synthetic_root,
                                                                        tmp_path, capsys, monkeypatch):
    suite = _suite(tmp_path / "s.yaml", [{"name": "cancel_me", **KNN},
                                         {"name": "too_long", "timeout_min": 1, **KNN}], synthetic_root)
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpts[0]), "--suite", str(suite), "--out", str(out), "--no-report", "--launcher", "slurm"]
    with monkeypatch.context() as m:
        m.setattr(suite_jobs.TaskSpec, "command", lambda self, python, ck, o: [python, "-c", "import time; time.sleep(600)"])
        cancelled = threading.Thread(target=_scancel_when_running, args=(out, "cancel_me"), daemon=True)
        cancelled.start()
        assert run_all.main(args) == 1
        cancelled.join(5)
    by_task = {r["task_name"]: r for r in _records(out)}
    assert by_task["cancel_me"]["status"] == "failed" and by_task["cancel_me"]["cluster_state"] == "CANCELLED"
    assert by_task["too_long"]["status"] == "failed" and by_task["too_long"]["cluster_state"] == "TIMEOUT"
    assert "ended by the cluster: TIMEOUT" in by_task["too_long"]["error"]
    capsys.readouterr()
    # the real task this time, with a longer limit (a loaded machine): both re-submitted, both finish
    assert run_all.main([*args, "--slurm-time", "10"]) == 0
    assert "2 to run" in capsys.readouterr().out
    assert [r["status"] for r in _records(out)][-2:] == ["ok", "ok"]


def _scancel_when_running(out: Path, task: str, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            jobs = json.loads((out / "jobs.json").read_text())["jobs"]
        except (OSError, ValueError, KeyError):
            jobs = {}
        ids = [v["job_id"] for k, v in jobs.items() if f"/{task}@" in k]
        if ids and _squeue_state(ids[0]) == "RUNNING":
            subprocess.run(["scancel", ids[0]], check=True)
            return
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pretrain_on_slurm_requeued_gives_the_torchrun_weights(slurm_cluster, synthetic_root, tmp_path):
    """2 tasks (gloo, CPU) on SLURM, preempted (SIGUSR2, as before a time limit) after epoch 1 and requeued
    with --resume auto, end with the same weights as an uninterrupted torchrun --nproc_per_node 2 run."""
    args = tiny_args(synthetic_root, tmp_path, "optim.epochs=3")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    sub = subprocess.run([sys.executable, "-m", "mast.pretrain", "--launcher", "slurm", "--tasks-per-node", "2",
                          "--slurm-time", "10", *args, "--name", "slurm"], env=env, capture_output=True, text=True)
    assert sub.returncode == 0, sub.stderr
    job_id = re.search(r"submitted: SLURM job (\d+)", sub.stdout).group(1)
    torchrun = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "-m", "mast.pretrain", *args, "--name", "torchrun"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    signalled = hurried = False
    deadline = time.monotonic() + 800
    while time.monotonic() < deadline:
        if not signalled and (tmp_path / "slurm" / "last.pth").is_file():
            subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
            signalled = True
        state = _squeue_state(job_id)
        if signalled and not hurried and state == "PENDING":  # skip SLURM's requeue delay (~2 min)
            hurried = subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"]).returncode == 0
        if not state:
            break
        time.sleep(0.5)
    assert torchrun.wait(300) == 0, torchrun.stderr.read()
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "slurm" / "slurm").rglob("*_0_log.*"))
    assert signalled and f"Requeued job {job_id}" in logs, logs[-2000:]
    a = torch.load(tmp_path / "slurm" / "backbone.pth", weights_only=True)
    b = torch.load(tmp_path / "torchrun" / "backbone.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert oct((tmp_path / "slurm" / "slurm").stat().st_mode & 0o777) == "0o700"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pretrain_cancelled_then_the_same_command_continues_it(slurm_cluster, synthetic_root, tmp_path):
    """Pretraining is one job of the job runner: a job the cluster ended is collected by the same command,
    which submits it again with --resume auto (from the run's own last.pth) and follows it to its end."""
    args = tiny_args(synthetic_root, tmp_path, "optim.epochs=3", "--name", "run", "--launcher", "slurm",
                     "--slurm-time", "10")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    sub = subprocess.run([sys.executable, "-m", "mast.pretrain", *args], env=env, capture_output=True, text=True)
    assert sub.returncode == 0, sub.stderr
    job_id = re.search(r"submitted: SLURM job (\d+)", sub.stdout).group(1)
    deadline = time.monotonic() + 600
    while not (tmp_path / "run" / "last.pth").is_file() and _squeue_state(job_id):
        assert time.monotonic() < deadline, "no last.pth within 600 s"
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], check=True)
    while _squeue_state(job_id) not in ("", "CANCELLED"):
        time.sleep(0.5)
    again = subprocess.run([sys.executable, "-m", "mast.pretrain", *args, "--wait"], env=env, capture_output=True,
                           text=True, timeout=700)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"failed: ended by the cluster: CANCELLED (SLURM job {job_id})" in again.stdout, again.stdout
    assert again.stdout.count("submitted: SLURM job") == 1 and "COMPLETED" in again.stdout, again.stdout
    log = (tmp_path / "run" / "slurm" / "pretrain.log").read_text()
    commands = [line for line in log.splitlines() if line.startswith(f"{sys.executable} -m mast.pretrain")]
    assert len(commands) == 2 and "--resume" not in commands[0] and commands[1].endswith("--resume auto"), commands
    assert (tmp_path / "run" / "backbone.pth").is_file(), log[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_study_matched_run_starts_after_its_mast_run(slurm_cluster, tmp_path, capsys):
    """The study's dependencies become afterok: everything is submitted at once, and the matched-λ run
    (and each checkpoint's probes) starts only after the run it depends on has finished."""
    from transfer.orchestrate import study
    from plumbing.jobs import Runner, SlurmOptions

    args = study.build_parser().parse_args(["--seeds", "0", "--arms", "vicreg_matched", "mast", "--data",
                                            str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
                                            "--out", str(tmp_path / "out")])
    jobs = study.plan_jobs(args, [])
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    for job in jobs:  # the real dependency graph, with commands that only record when they ran
        name = job.key.replace(":", "_")
        job.cmd = [sys.executable, "-c", f"import time, pathlib; p = pathlib.Path({str(stamps)!r}); "
                   f"(p / '{name}.start').write_text(repr(time.time())); time.sleep(2); "
                   f"(p / '{name}.end').write_text(repr(time.time()))"]
    study.execute(jobs, Runner(tmp_path / "runs", "slurm", slurm=SlurmOptions(cpu_only=True)))
    out = capsys.readouterr().out
    assert {j.state for j in jobs} == {"ok"}, out
    lines = out.splitlines()
    assert all("submitted: SLURM job" in line for line in lines[:4]), out  # submitted before any ended

    def at(name: str, edge: str) -> float:
        return float((stamps / f"{name}.{edge}").read_text())
    assert at("pretrain_vicreg_matched_s0", "start") >= at("pretrain_mast_s0", "end")
    assert at("probes_mast_s0", "start") >= at("pretrain_mast_s0", "end")
    assert at("probes_vicreg_matched_s0", "start") >= at("pretrain_vicreg_matched_s0", "end")


def _start_output(slurm_cluster: str) -> str:
    """What ``scripts/slurm_local.sh start`` prints (run again on the running cluster: it starts nothing new)."""
    folder = Path(slurm_cluster).parents[1]
    out = subprocess.run(["bash", str(SCRIPT), "start"], env=dict(os.environ, MAST_SLURM_DIR=str(folder)),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_gpu_request_on_the_local_cluster_names_the_cpu_only_option(slurm_cluster, ckpts, synthetic_root, tmp_path,
                                                                      capsys):
    """The local node has no GPUs: sbatch's gres refusal comes back as one line naming the option that asks for none."""
    out = tmp_path / "out"
    code = run_all.main(["--ckpt", str(ckpts[0]), "--suite", "demo", "--tasks", "knn", "--var", f"data={synthetic_root}",
                         "--out", str(out), "--no-report", "--launcher", "slurm"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert "Invalid generic resource (gres) specification" in err and "rerun with --slurm-cpu-only" in err, err
    assert _records(out) == []  # nothing recorded as failed
    from mast.pretrain import main as pretrain

    assert pretrain(tiny_args(synthetic_root, tmp_path, "--name", "gpu", "--launcher", "slurm",
                              "--gpus-per-node", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "(gres)" in err and "rerun with --gpus-per-node 0" in err, err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_start_prints_the_readme_command_and_it_runs_as_written(slurm_cluster, synthetic_root, tmp_path):
    """``start`` prints the export and the run_all line that README "On a cluster" and docs/CLUSTER.md quote,
    and that line runs as written from a checkout after ``make demo`` (its data/ and runs/ stood in for here)."""
    printed = [ln.strip() for ln in _start_output(slurm_cluster).splitlines()]
    export = next(ln for ln in printed if ln.startswith("export SLURM_CONF="))
    command = next(ln for ln in printed if ln.startswith("python transfer/run_all.py"))
    assert "--slurm-cpu-only" in command and export == f"export SLURM_CONF={slurm_cluster}"
    for doc in ("README.md", "docs/CLUSTER.md"):
        text = (REPO / doc).read_text()
        assert export in text and command in text, doc
    # a checkout after make demo: the shim, the demo data, a pretraining run (random weights stand in)
    (tmp_path / "transfer").symlink_to(REPO / "transfer")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synthetic").symlink_to(synthetic_root)
    run = tmp_path / "runs" / "pretrain" / "demo_mast_s0"
    run.mkdir(parents=True)
    torch.save(build_resnet("resnet18").state_dict(), run / "backbone.pth")
    (run / "config.yaml").write_text("method: mast\nseed: 0\n")
    argv = command.split()
    env = dict(os.environ, PYTHONPATH=str(REPO), SLURM_CONF=export.split("=", 1)[1], OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=550)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    records = _records(tmp_path / "runs" / "transfer")
    assert len(records) == 3 and {r["status"] for r in records} == {"ok"} and {r["name"] for r in records} == {"demo_mast_s0"}
