"""The run folder's lock (plumbing/lock.py): held by one process, never by its forked DataLoader workers,
and every way it cannot be made is one line (issue 28 item 6, issue 27 case 11)."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_args
from plumbing.lock import FolderBusyError, FolderLock, FolderUnusableError

REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (FileNotFoundError, IndexError):
        return False


def test_a_forked_child_does_not_hold_the_lock_after_its_parent_is_killed(tmp_path: Path) -> None:
    # the child prints once os.fork() has returned in it, i.e. after its at-fork hook closed its copy: killing the
    # parent before the child ran at all (a loaded machine) would test the scheduler, not the lock; one write each (print's two writes interleave on the shared pipe)
    code = ("import os, sys, time; from plumbing.lock import FolderLock; "
            f"lock = FolderLock({str(tmp_path / 'run')!r}, 'job'); pid = os.fork(); "
            "sys.stdout.write(f'{pid or \"child\"}\\n'); sys.stdout.flush(); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = {holder.stdout.readline().strip(), holder.stdout.readline().strip()}
    assert "child" in lines, lines
    child = int((lines - {"child"}).pop())
    try:
        with pytest.raises(FolderBusyError, match=f"PID {holder.pid}"):
            FolderLock(tmp_path / "run", "job")
        holder.kill()  # SIGKILL; its forked child lives on
        holder.wait()
        assert _alive(child)
        FolderLock(tmp_path / "run", "job").release()  # free at once
    finally:
        holder.kill()
        os.kill(child, signal.SIGKILL)


@pytest.mark.slow
def test_sigkill_with_live_dataloader_workers_and_an_immediate_resume(synthetic_root, tmp_path) -> None:
    from mast.pretrain import main

    args = tiny_args(synthetic_root, tmp_path, "--name", "killed", "data.num_workers=2", "optim.epochs=40")
    proc = subprocess.Popen([sys.executable, "-m", "mast.pretrain", *args], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "killed"
    deadline = time.monotonic() + 300
    while not ((run / "metrics.jsonl").exists() and '"loss"' in (run / "metrics.jsonl").read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    workers = _children(proc.pid)
    assert workers, "no DataLoader worker was forked"
    proc.kill()  # SIGKILL: the workers outlive it for a while (they poll for their parent every 5 s)
    proc.wait()
    assert any(_alive(w) for w in workers)  # the situation of the bug: orphaned workers still alive
    FolderLock(run, "mast.pretrain").release()  # at once: no "in use by another mast.pretrain"
    assert main(["--resume", "auto"] + args[:-1] + ["optim.epochs=2"]) == 0


def test_lock_that_is_a_folder_or_a_full_disk_is_one_line(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "run" / ".lock").mkdir(parents=True)
    with pytest.raises(FolderUnusableError) as err:
        FolderLock(tmp_path / "run", "job")
    assert "is a folder" in str(err.value) and "\n" not in str(err.value)

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(FolderUnusableError, match="no space left") as err:
        FolderLock(tmp_path / "new", "job")
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    FolderLock(tmp_path / "new", "job").release()  # nothing held after the failure


def test_run_all_and_pretraining_refuse_a_folder_lock_in_one_line(tmp_path: Path, synthetic_root) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    (tmp_path / "res" / ".lock").mkdir(parents=True)
    (tmp_path / "runs" / "x" / ".lock").mkdir(parents=True)
    torch_file = tmp_path / "r18.pth"
    import torch

    from transfer.backbones.resnet.load import build_resnet

    torch.save(build_resnet("resnet18").state_dict(), torch_file)
    for cmd in ([sys.executable, "-m", "transfer.run_all", "--ckpt", str(torch_file), "--out", str(tmp_path / "res"),
                 "--suite", "demo"],
                [sys.executable, "-m", "mast.pretrain", *tiny_args(synthetic_root, tmp_path / "runs", "--name", "x")]):
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and "is a folder" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_write_that_fails_at_once_does_not_claim_0_mib_needed(tmp_path: Path) -> None:
    from plumbing.atomic import DiskFullError, atomic_write

    def full(_f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError) as err:
        atomic_write(tmp_path / "x.json", full)
    message = str(err.value)
    assert "0.0 MiB" not in message and "needs at least" not in message and " free)" in message
    assert "run the same command again" in message
