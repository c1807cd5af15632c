"""What a hostile or careless user cannot break (issue: safe loading, locked folders, signals, full disk).

Each test plants the real thing: a pickle payload that would create a marker file, a second live
process, a real SIGINT, a writer whose disk fills up mid-write.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from plumbing import atomic
from plumbing.atomic import DiskFullError, append_line_atomic, atomic_write, remove_stale_temps, write_text_atomic
from plumbing.lock import FolderBusyError, FolderLock
from mast.pretrain import main
from conftest import tiny_args
from test_pretrain import _backbone

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this object runs ``open(marker, 'w')``: the marker proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_never_unpickles_code(synthetic_root, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    planted = tmp_path / "runs" / "evil" / "last.pth"
    planted.parent.mkdir(parents=True)
    torch.save({"model": Payload(marker), "config": {}}, planted)
    for resume in (str(planted), "auto"):
        code = main(["--resume", resume] + tiny_args(synthetic_root, tmp_path / "runs", "--name", "evil"))
        err = capsys.readouterr().err.strip()
        assert code == 2 and "tensors only" in err and "\n" not in err
        assert not marker.exists()


def test_folder_lock_names_the_holder_and_dies_with_it(tmp_path):
    with FolderLock(tmp_path / "run", "job"):
        with pytest.raises(FolderBusyError, match=f"PID {os.getpid()}"):
            FolderLock(tmp_path / "run", "job")
    FolderLock(tmp_path / "run", "job").release()  # released: free again
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from plumbing.lock import FolderLock; "
                               f"held = FolderLock({str(tmp_path / 'run')!r}, 'job'); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusyError, match=f"PID {holder.pid}"):
            FolderLock(tmp_path / "run", "job")
    finally:
        holder.kill()  # kill -9: the OS releases the lock
        holder.wait()
    FolderLock(tmp_path / "run", "job").release()


def _wait_for_step(metrics: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and any('"loss"' in ln for ln in metrics.read_text().splitlines()):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("pretraining logged no step in time")


@pytest.mark.slow
def test_second_run_refused_sigint_saves_and_resume_equals_uninterrupted(full_run, synthetic_root, tmp_path,
                                                                         capsys):
    args = tiny_args(synthetic_root, tmp_path, "--name", "cut")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "mast.pretrain", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "cut"
    _wait_for_step(run / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGSTOP)  # hold it mid-epoch while the second run tries the folder
    try:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert f"PID {proc.pid}" in err and "\n" not in err
        proc.send_signal(signal.SIGINT)
    finally:
        proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    line = [ln for ln in stderr.splitlines() if ln.startswith("interrupted at step")]
    assert line and "--resume auto" in line[0]
    step = int(line[0].split()[3].rstrip(";"))
    assert 1 <= step < 8 and torch.load(run / "last.pth", weights_only=True)["step"] == step
    (run / ".last.pth.x1y2z3.tmp").write_bytes(b"left by a killed save")

    assert main(["--resume", "auto"] + args) == 0
    assert not (run / ".last.pth.x1y2z3.tmp").exists()
    a, b = _backbone(full_run / "backbone.pth"), _backbone(run / "backbone.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda r: [json.loads(ln).get("loss") for ln in (r / "metrics.jsonl").read_text().splitlines()]
    assert losses(full_run) == losses(run)


def test_resume_into_another_existing_run_is_refused(full_run, synthetic_root, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("method: mast\n")
    code = main(["--resume", str(full_run / "last.pth")] + tiny_args(synthetic_root, tmp_path, "--name", "other"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "another existing run" in err and "\n" not in err
    assert (other / "config.yaml").read_text() == "method: mast\n"


def _full_disk(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_is_one_line_and_leaves_the_old_file(tmp_path):
    target = tmp_path / "result.json"
    write_text_atomic(target, "old")
    with pytest.raises(DiskFullError) as err:
        atomic_write(target, _full_disk)
    assert str(target) in str(err.value) and "no space" in str(err.value) and "\n" not in str(err.value)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]

    def torch_full(f):  # torch.save wraps the failed write in its own RuntimeError
        f.write = _full_disk
        torch.save({"w": torch.zeros(1000)}, f)

    with pytest.raises(DiskFullError):
        atomic_write(target, torch_full)
    assert target.read_text() == "old"


def test_append_never_leaves_a_torn_line(tmp_path, monkeypatch):
    log = tmp_path / "results.jsonl"
    append_line_atomic(log, json.dumps({"task": "a"}))
    real_write = os.write

    def half_then_full(fd, data):  # the disk fills up half-way through the line
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "write", half_then_full)
    with pytest.raises(DiskFullError, match="results.jsonl"):
        append_line_atomic(log, json.dumps({"task": "b", "metrics": list(range(100))}))
    monkeypatch.undo()
    append_line_atomic(log, json.dumps({"task": "c"}))
    assert [json.loads(ln)["task"] for ln in log.read_text().splitlines()] == ["a", "c"]


def test_stale_temps_are_only_our_writer_s(tmp_path):
    (tmp_path / ".last.pth.k2j3h4.tmp").write_bytes(b"x")
    (tmp_path / "notes.tmp").write_text("a user's file")
    (tmp_path / ".hidden").write_text("a user's file")
    assert [p.name for p in remove_stale_temps(tmp_path)] == [".last.pth.k2j3h4.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "notes.tmp"]


def test_symlink_loops_are_refused_in_one_line_and_outside_folders_followed(tmp_path):
    import numpy as np
    from PIL import Image

    from mast.data.folder import DatasetError, list_images

    root = tmp_path / "root"
    for c in ("a", "b", "../elsewhere"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / c / f"{i}.png")
    (root / "b" / "outside").symlink_to(tmp_path / "elsewhere")  # a folder outside the root: followed
    files = list_images(root)
    assert len(files) == 9 and len({f.resolve() for f in files}) == 9
    for link, target in (("a/loop", root / "a"), ("b/up", root)):  # a -> a; b -> root -> a, b
        (root / link).symlink_to(target)
        with pytest.raises(DatasetError, match=f"{root / link} is a symlink to .*a folder above it") as err:
            list_images(root)
        assert "\n" not in str(err.value)
        (root / link).unlink()


def test_16bit_and_float_images_keep_their_content(tmp_path):
    import numpy as np
    from PIL import Image

    from mast.data.folder import open_rgb

    ramp = np.linspace(0, 1, 64).reshape(8, 8)
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(ramp.astype(np.float32), mode="F").save(tmp_path / "float.tiff")
    for name in ("deep.png", "float.tiff"):
        img = np.asarray(open_rgb(tmp_path / name))
        assert img.dtype == np.uint8 and img.shape == (8, 8, 3)
        assert img.min() == 0 and img.max() == 255, name  # not all-white, not all-black
        assert np.abs(img[..., 0].astype(float) - ramp * 255).max() <= 1, name


def test_detectron2_config_with_a_python_tag_never_runs(tmp_path, capsys):
    from transfer.detection.runner import main as detection_main

    marker = tmp_path / "PWNED"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f'_BASE_: null\nSEED: !!python/object/apply:builtins.open ["{marker}", "w"]\n')
    code = detection_main(["--ckpt", str(tmp_path / "x.pth"), "--config", str(cfg), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--config" in err and "\n" not in err
    assert not marker.exists()


def test_segmentation_resume_follows_no_pointer_out_of_its_work_folder(tmp_path, synthetic_root):
    from transfer.records import EXIT_FAILED
    from transfer.segmentation.runner import main as segmentation_main

    marker = tmp_path / "PWNED"
    torch.save({"meta": Payload(marker), "state_dict": {}}, tmp_path / "evil.pth")
    torch.manual_seed(0)
    from transfer.backbones.resnet.load import build_resnet

    torch.save(build_resnet("resnet18").state_dict(), tmp_path / "r18.pth")
    out = tmp_path / "seg"
    (out / "work").mkdir(parents=True)
    (out / "work" / "last_checkpoint").write_text(str(tmp_path / "evil.pth"))
    code = segmentation_main(["--ckpt", str(tmp_path / "r18.pth"), "--out", str(out), "--data-root",
                              str(synthetic_root), "--resume"])
    record = json.loads((out / "record.json").read_text())
    assert code == EXIT_FAILED and "points outside the run" in record["error"]
    assert not marker.exists()


def test_convert_never_overwrites_its_input_or_an_existing_file(tmp_path, capsys):
    from transfer.backbones.resnet.load import build_resnet
    from transfer.convert import main as convert_main

    ckpt = tmp_path / "r18.pth"
    torch.save(build_resnet("resnet18").state_dict(), ckpt)
    before = ckpt.read_bytes()
    for out, needle in ((ckpt, "is the input --ckpt"), (tmp_path, "is a folder")):
        assert convert_main(["--ckpt", str(ckpt), "--to", "mmseg", "--out", str(out), "--force"]) == 1
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err
    assert ckpt.read_bytes() == before
    (tmp_path / "taken.pth").write_text("a user's file")
    assert convert_main(["--ckpt", str(ckpt), "--to", "mmseg", "--out", str(tmp_path / "taken.pth")]) == 1
    assert "--force" in capsys.readouterr().err and (tmp_path / "taken.pth").read_text() == "a user's file"
    assert convert_main(["--ckpt", str(ckpt), "--to", "mmseg", "--out", str(tmp_path / "taken.pth"), "--force"]) == 0


def test_full_disk_in_a_probe_is_one_line_and_a_full_cache_is_skipped(tmp_path, synthetic_root, monkeypatch, capsys):
    from transfer.backbones.resnet.load import build_resnet
    from transfer.probes import features
    from transfer.probes.knn import main as knn_main

    torch.manual_seed(0)
    torch.save(build_resnet("resnet18").state_dict(), tmp_path / "r18.pth")
    args = ["--ckpt", str(tmp_path / "r18.pth"), "--data", str(synthetic_root / "classification" / "color"),
            "--image-size", "32", "--no-progress", "--cache-dir", str(tmp_path / "cache")]

    def full(path, obj):
        raise DiskFullError(errno.ENOSPC, f"{path}: no space left on the device")

    monkeypatch.setattr(features, "torch_save_atomic", full)  # the cache's disk is full: the task goes on
    assert knn_main([*args, "--out", str(tmp_path / "ok")]) == 0
    assert "cache not written" in capsys.readouterr().err
    monkeypatch.setattr("transfer.records.write_text_atomic", lambda path, text: full(path, text))
    code = knn_main([*args, "--out", str(tmp_path / "full")])  # the output's disk is full too
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err and "no space left" in err[-1] and "None" not in err[-1]


def test_nan_weights_are_refused_not_reported_at_chance(tmp_path, synthetic_root, capsys):
    from transfer.backbones.resnet.load import build_resnet
    from transfer.probes.knn import main as knn_main

    state = build_resnet("resnet18").state_dict()
    state["layer2.0.bn1.weight"][3] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    code = knn_main(["--ckpt", str(tmp_path / "nan.pth"), "--data", str(synthetic_root / "classification" / "color"),
                     "--image-size", "32", "--no-progress", "--cache-dir", str(tmp_path / "cache"),
                     "--out", str(tmp_path / "o")])
    record = json.loads((tmp_path / "o" / "record.json").read_text())
    assert code == 1 and record["status"] == "failed"
    assert "layer2.0.bn1.weight" in record["error"] or "NaN/Inf" in record["error"]


def test_nonfinite_or_sparse_weights_are_refused_at_load_naming_the_tensor(tmp_path, capsys):
    from transfer.backbones.resnet.load import build_resnet
    from transfer.convert import main as convert_main

    state = build_resnet("resnet18").state_dict()
    bad = {"inf.pth": {**state, "layer3.1.bn2.running_var": state["layer3.1.bn2.running_var"].clone().fill_(float("inf"))},
           "sparse.pth": {**state, "conv1.weight": state["conv1.weight"].to_sparse()}}
    for name, obj in bad.items():
        torch.save(obj, tmp_path / name)
        assert convert_main(["--ckpt", str(tmp_path / name), "--to", "mmseg", "--out", str(tmp_path / "o.pth")]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert ("layer3.1.bn2.running_var" in err and "NaN/Inf" in err) or ("conv1.weight" in err and "dense" in err)
    assert not (tmp_path / "o.pth").exists()


def test_one_class_or_one_way_is_refused_not_reported_as_100(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from transfer.backbones.resnet.load import build_resnet
    from transfer.probes.fewshot import main as fewshot_main
    from transfer.probes.knn import main as knn_main

    torch.save(build_resnet("resnet18").state_dict(), tmp_path / "r18.pth")
    for split in ("train", "test"):
        (tmp_path / "one" / split / "only").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "one" / split / "only" / f"{i}.png")
    common = ["--ckpt", str(tmp_path / "r18.pth"), "--data", str(tmp_path / "one"), "--image-size", "32",
              "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert knn_main([*common, "--out", str(tmp_path / "k")]) == 1
    assert "at least 2" in json.loads((tmp_path / "k" / "record.json").read_text())["error"]
    with pytest.raises(SystemExit):
        fewshot_main([*common, "--out", str(tmp_path / "f"), "--ways", "1"])
    assert "--ways must be >= 2" in capsys.readouterr().err


def test_code_version_is_dirty_for_changed_code_not_for_rebuilt_committed_reports(tmp_path):
    from plumbing.provenance import code_version

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)

    for rel in ("mast/x.py", "reports/demo/index.md", "reports/study/index.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("v1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    clean = code_version(tmp_path)
    assert len(clean) == 12 and not clean.endswith("-dirty")
    (tmp_path / "reports/demo/index.md").write_text("rebuilt by make demo\n")  # what make demo does
    git("rm", "-q", "reports/study/index.md")
    (tmp_path / "reports/demo/forest.png").write_bytes(b"new, untracked")
    assert code_version(tmp_path) == clean
    (tmp_path / "mast/x.py").write_text("v2\n")
    assert code_version(tmp_path) == clean + "-dirty"
