"""The third fault sweep (issue 36): the job runner owns what it records. Real files planted in OUT
(a truncated, foreign or folder ``jobs.json``, a symlinked or file ``.submitit``), the real local SLURM
cluster (scripts/slurm_local.sh, through test_slurm's fixture), real signals to a real run_all process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from test_slurm import KNN, _records, _squeue_state, _suite, ckpts, slurm_cluster  # noqa: F401 - fixtures
from transfer.orchestrate import run_all, suite_jobs
from plumbing.job_store import JobStore, LaunchError

REPO = Path(__file__).resolve().parents[3]


def _one_line(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def _squeue_names() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


def _wait_gone(job_ids: list[str], limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and any(_squeue_state(j) for j in job_ids):
        time.sleep(1)


# ---- jobs.json read defensively (no cluster needed for the reader itself) ----------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20).map(lambda v: json.dumps(v).encode())))
def test_any_jobs_json_is_read_or_refused_in_one_line(tmp_path_factory, content):
    """Property: whatever bytes jobs.json holds, JobStore loads it or raises one LaunchError line."""
    folder = tmp_path_factory.mktemp("store")
    (folder / "jobs.json").write_bytes(content)
    try:
        store = JobStore(folder)
    except LaunchError as e:
        assert "\n" not in str(e) and "jobs.json" in str(e) and len(str(e)) < 800
    else:
        assert isinstance(store.jobs, dict) and len(store.token) == 12


@pytest.mark.parametrize("plant", ["truncated", "list", "folder", "symlink", "fifo", "bad id"])
def test_a_damaged_jobs_json_is_one_line_and_never_a_silent_resubmission(tmp_path, plant):
    path = tmp_path / "jobs.json"
    good = json.dumps({"token": "0123456789ab", "jobs": {"a/knn@x": {"job_id": "17", "submitted": 0}}})
    if plant == "truncated":
        path.write_text(good[: len(good) // 2])
    elif plant == "list":
        path.write_text("[1, 2]")
    elif plant == "folder":
        path.mkdir()
    elif plant == "symlink":
        (tmp_path / "elsewhere.json").write_text(good)
        path.symlink_to(tmp_path / "elsewhere.json")
    elif plant == "fifo":
        os.mkfifo(path)
    else:
        path.write_text(good.replace('"17"', '"17; rm -rf ~"'))
    with pytest.raises(LaunchError) as err:
        JobStore(tmp_path)
    assert "\n" not in str(err.value) and "squeue" in str(err.value) and str(path) in str(err.value)


# ---- .submitit never followed through a symlink, never a file -----------------------------------------------------


@pytest.mark.parametrize("plant", ["symlink", "file"])
def test_a_planted_submitit_folder_is_refused_and_the_target_untouched(tmp_path, capsys, plant):
    from test_run_all import _suite as local_suite

    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.mkdir(mode=0o755)
    victim.chmod(0o755)
    if plant == "symlink":
        (out / ".submitit").symlink_to(victim)
    else:
        (out / ".submitit").write_text("mine")
    torch_ckpt = _r18(tmp_path)
    suite = local_suite(tmp_path / "s.yaml", [{"name": "a", "task": "knn"}])
    code = run_all.main(["--ckpt", str(torch_ckpt), "--suite", str(suite), "--out", str(out), "--no-report"])
    _one_line(capsys, code, ".submitit", "symlink" if plant == "symlink" else "not a folder")
    assert oct(victim.stat().st_mode & 0o777) == "0o755" and list(victim.iterdir()) == []
    assert plant == "symlink" or (out / ".submitit").read_text() == "mine"


def _r18(tmp_path: Path) -> Path:
    import torch

    from transfer.backbones.resnet.load import build_resnet

    path = tmp_path / "r18.pth"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(build_resnet("resnet18").state_dict(), path)
    return path


# ---- CLI option validation (property-based) -----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(-10**6, 10**6).map(str), st.text(max_size=6)))
def test_slurm_time_is_a_positive_number_of_minutes(value):
    """Property: --slurm-time parses to a positive int equal to the text's number, or argparse refuses it
    (exit 2); -5 was submitted as an unlimited time limit."""
    parser = run_all.build_parser()
    try:
        args = parser.parse_args(["--slurm-time", value])
    except SystemExit as e:
        assert e.code == 2
        try:
            assert not 1 <= int(value.strip()) <= 366 * 24 * 60
        except ValueError:
            pass
    else:
        assert args.slurm_time == int(value.strip()) and args.slurm_time >= 1


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(-1000, 1000).map(str), st.text(max_size=5)))
def test_vit_last_blocks_and_stem_padding_are_refused_out_of_range(value):
    """Property: --vit-last-blocks 0 ran as 1; now anything but a positive int (or empty) is refused."""
    from transfer.probes.knn import build_parser

    base = ["--ckpt", "c", "--data", "d", "--out", "o"]
    for option, ok in (("--vit-last-blocks", lambda n: n >= 1), ("--stem-padding", lambda n: 0 <= n <= 3)):
        try:
            parsed = build_parser().parse_args([*base, option, value])
        except SystemExit as e:
            assert e.code == 2
            try:
                assert not ok(int(value))
            except ValueError:
                pass
        else:
            number = getattr(parsed, option[2:].replace("-", "_"))
            assert (number is None and not value.strip()) or ok(number)


# ---- on the real cluster ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_truncated_jobs_json_force_and_a_foreign_job_on_the_cluster(slurm_cluster, ckpts, synthetic_root, tmp_path,
                                                                    capsys):
    """Items 3, 4 and the foreign running job: a truncated jobs.json is refused (the running job is not
    submitted twice); --force submits again instead of reporting the earlier job's outcome; a job id the
    cluster names otherwise is never waited on nor collected."""
    suite = _suite(tmp_path / "s.yaml", [{"name": "k1", **KNN}], synthetic_root)
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpts[0]), "--suite", str(suite), "--out", str(out), "--no-report", "--launcher", "slurm"]
    assert run_all.main([*args, "--no-wait"]) == 0
    store = json.loads((out / "jobs.json").read_text())
    (job,) = store["jobs"].values()
    assert job["name"].startswith(f"mast-{store['token']}-") and job["name"] in _squeue_names()
    text = (out / "jobs.json").read_text()
    (out / "jobs.json").write_text(text[: len(text) // 2])  # truncated (a full disk, a kill mid-copy)
    capsys.readouterr()
    _one_line(capsys, run_all.main(args), "jobs.json", "truncated")
    assert _squeue_names().count(job["name"]) <= 1  # never a second copy
    (out / "jobs.json").write_text(text)
    _wait_gone([job["job_id"]])
    capsys.readouterr()
    assert run_all.main([*args, "--force"]) == 0  # the finished job is not reused: submitted again
    forced = capsys.readouterr().out
    assert "is not reused" in forced and forced.count("submitted: SLURM job") == 1, forced
    assert [r["status"] for r in _records(out)] == ["ok"]  # --force ran it again; its record replaced? one record

    foreign = subprocess.run(["sbatch", "--parsable", "-J", "someone_else", "-t", "5", "--wrap", "sleep 120"],
                             capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    try:
        key = next(iter(store["jobs"]))
        (out / "jobs.json").write_text(json.dumps({"token": store["token"], "jobs": {key: {"job_id": foreign}}}))
        capsys.readouterr()
        assert run_all.main([*args, "--force"]) == 0
        said = capsys.readouterr().out
        assert f"SLURM job {foreign} is not this folder's job" in said and "submitted: SLURM job" in said, said
        assert _squeue_state(foreign) in ("RUNNING", "PENDING")  # left alone
    finally:
        subprocess.run(["scancel", foreign])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_jobs_json_a_folder_submits_nothing_so_nothing_is_orphaned(slurm_cluster, ckpts, synthetic_root, tmp_path,
                                                                  capsys):
    suite = _suite(tmp_path / "s.yaml", [{"name": "k1", **KNN}], synthetic_root)
    out = tmp_path / "out"
    (out / "jobs.json").mkdir(parents=True)
    before = set(_squeue_names())  # another test's job may still be queued, or end meanwhile
    code = run_all.main(["--ckpt", str(ckpts[0]), "--suite", str(suite), "--out", str(out), "--no-report",
                         "--launcher", "slurm"])
    _one_line(capsys, code, "jobs.json", "is a folder")
    assert set(_squeue_names()) <= before and not list((out / ".submitit").iterdir())  # nothing new submitted


# ---- Ctrl-C and SIGTERM: no submitit traceback on the terminal ---------------------------------------------------

DRIVER = """
import sys, torch, yaml
from pathlib import Path
from transfer.orchestrate import run_all, suite_jobs
from transfer.backbones.resnet.load import build_resnet
d = Path(sys.argv[1])
torch.save(build_resnet("resnet18").state_dict(), d / "r18.pth")
(d / "s.yaml").write_text(yaml.safe_dump({"scale": "demo", "tasks": [{"name": "a", "task": "knn"}]}))
suite_jobs.TaskSpec.command = lambda self, python, ck, out: [python, "-c", "import time; time.sleep(120)  # " + d.name]
sys.exit(run_all.main(["--ckpt", str(d / "r18.pth"), "--suite", str(d / "s.yaml"), "--out", str(d / "out"),
                       "--no-report"]))
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("signum,group", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_ctrl_c_or_sigterm_print_no_submitit_traceback(tmp_path, signum, group):
    """Ctrl-C reaches the whole foreground group (run_all, submitit's controller, the task); SIGTERM only
    run_all. Either way the terminal gets run_all's lines, never the controller's KeyboardInterrupt."""
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    marker = f"time.sleep(120)  # {tmp_path.name}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _running(marker):
        time.sleep(0.3)
    time.sleep(1.0)
    os.killpg(proc.pid, signum) if group else os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted" in err and not _running(marker)


def _running(marker: str) -> bool:
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                return True
        except OSError:
            pass
    return False
