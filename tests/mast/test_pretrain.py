"""``python -m mast.pretrain`` end to end on tiny settings (real torch, real images, CPU).

Covers: every run-directory file, weights-only backbone export, kill-and-resume equality,
refused resumes, non-finite loss, corrupt images and wrong dataset layouts.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image

from plumbing.atomic import torch_save_atomic
from mast.data.folder import ResumableSampler, TwoViewFolder
from mast.augment import AugmentConfig, SpatialTwoView
from mast.pretrain import main
from conftest import tiny_args  # noqa: F401 - shared with test_reliability.py
from tensorboard_reader import read_scalars


def _backbone(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_run_writes_every_file(full_run):
    cfg = yaml.safe_load((full_run / "config.yaml").read_text())
    assert cfg["method"] == "mast" and cfg["model"]["arch"] == "resnet18"
    assert "torch" in json.loads((full_run / "versions.json").read_text())

    steps = [json.loads(ln) for ln in (full_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in steps if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 9))
    for key in ("loss", "inv", "var", "cov", "unc", "mask_prior", "lr", "img_per_s",
                "u_mean/crop", "u_mean/solarize", "subspace_size/blur"):
        assert key in train[-1], key
    knn = [r for r in steps if "knn_top1" in r]
    assert [r["step"] for r in knn] == [0, 4, 8]

    rows = list(csv.DictReader((full_run / "summary.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert all(r["knn_top1"] for r in rows) and rows[2]["loss"]

    # backbone.pth: plain torchvision layout, weights-only, no fc
    state = _backbone(full_run / "backbone.pth")
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    net.load_state_dict(state, strict=True)
    init = _backbone(full_run / "backbone_init.pth")
    assert init.keys() == state.keys()
    assert not torch.equal(init["conv1.weight"], state["conv1.weight"])

    mast_state = torch.load(full_run / "mast_state.pth", weights_only=True)
    assert mast_state["method"] == "mast" and len(mast_state["aug_names"]) == 6
    assert mast_state["mask_logits"].shape == (6, 32)
    assert mast_state["heldout"]["delta"].shape == (8, 6) and mast_state["heldout"]["u"].shape == (8, 6)
    assert (mast_state["heldout"]["u"] >= 0).all() and mast_state["config"]["method"] == "mast"
    held = mast_state["heldout"]
    assert held["w_pair"].shape == (8,) and 0 < held["w_mean"] <= 1  # eq. (4) v2: w = 1/q in (0, 1]
    assert abs(held["w_mean"] - float(held["w_pair"].mean())) < 1e-6
    assert torch.load(full_run / "last.pth", weights_only=True)["step"] == 8


@pytest.mark.slow
def test_tensorboard_events_hold_the_logged_scalars(full_run):
    """TensorBoard's own reader finds metrics.jsonl's scalars in OUT_DIR/NAME/tensorboard/, step for step."""
    scalars = read_scalars(full_run / "tensorboard")
    lines = [json.loads(ln) for ln in (full_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if "loss" in r]
    for tag, key in (("loss/total", "loss"), ("loss/inv", "inv"), ("loss/unc", "unc"), ("optim/lr", "lr"),
                     ("w/eff", "w_eff"), ("w/mean", "w_mean"), ("u_mean/crop", "u_mean/crop"),
                     ("mask_logit_spread/crop", "mask_logit_spread/crop"), ("subspace_size/blur", "subspace_size/blur")):
        assert [s for s, _ in scalars[tag]] == list(range(1, 9)), tag
        np.testing.assert_allclose([v for _, v in scalars[tag]], [r[key] for r in train], rtol=1e-6, err_msg=tag)
    assert [s for s, _ in scalars["knn/top1"]] == [0, 4, 8]
    np.testing.assert_allclose([v for _, v in scalars["knn/top1"]], [r["knn_top1"] for r in lines if "knn_top1" in r],
                               rtol=1e-6)
    # u vs δ: Pearson r per augmentation and step, a correlation wherever it is defined
    corr = [v for aug in ("crop", "color", "blur", "solarize") for _, v in scalars.get(f"u_delta_corr/{aug}", [])]
    assert corr and all(-1.0 - 1e-6 <= v <= 1.0 + 1e-6 for v in corr)
    assert all(v >= 0 for t, pts in scalars.items() if t.startswith("mask_logit_spread/") for _, v in pts)


def test_checkpoint_reader_sees_method(full_run):
    from transfer.backbones import load

    _, info = load(str(full_run / "backbone.pth"))
    assert (info.family, info.arch, info.method) == ("resnet", "resnet18", "mast")


@pytest.mark.slow
def test_deterministic_pretraining_is_byte_identical_on_one_machine(full_run, synthetic_root, tmp_path):
    """README "The demo report": same machine, same command -> the same backbone file, byte for byte."""
    assert main(tiny_args(synthetic_root, tmp_path, "--name", "again")) == 0  # tiny_args: runtime.deterministic=true
    sha = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()
    for name in ("backbone_init.pth", "backbone.pth"):
        assert sha(full_run / name) == sha(tmp_path / "again" / name), name


def test_kill_and_resume_equals_uninterrupted(full_run, synthetic_root, tmp_path, capsys):
    args = tiny_args(synthetic_root, tmp_path, "--name", "cut")
    assert main(args + ["runtime.stop_after_steps=5"]) == 0  # stopped mid-epoch 2
    cut = tmp_path / "cut"
    assert torch.load(cut / "last.pth", weights_only=True)["step"] == 5
    assert not (cut / "mast_state.pth").exists()
    # a rerun without --resume must not silently overwrite the run
    assert main(args) == 2
    assert "--resume auto" in capsys.readouterr().err
    assert main(["--resume", "auto"] + args) == 0
    for name in ("backbone.pth",):
        a, b = _backbone(full_run / name), _backbone(cut / name)
        for key in a:
            assert torch.equal(a[key], b[key]), key
    ma = torch.load(full_run / "mast_state.pth", weights_only=True)
    mb = torch.load(cut / "mast_state.pth", weights_only=True)
    assert torch.equal(ma["mask_logits"], mb["mask_logits"]) and torch.equal(ma["u_bar"], mb["u_bar"])
    losses = lambda run: [json.loads(ln).get("loss") for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses(full_run) == losses(cut)  # same steps, logged once each, same values
    assert read_scalars(cut / "tensorboard")["loss/total"] == read_scalars(full_run / "tensorboard")["loss/total"]

    # resuming with a different config is refused, naming the keys
    assert main(["--resume", "auto"] + args + ["optim.base_lr=0.5", "model.tau=0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "optim.base_lr" in err and "model.tau" in err and "\n" not in err


@pytest.mark.slow
def test_resume_from_an_earlier_checkpoint_drops_the_later_events(full_run, synthetic_root, tmp_path):
    """Events the first process wrote after the checkpoint it is resumed from are not shown twice: TensorBoard's
    reader sees each step once, with the values of an uninterrupted run (the writer's purge_step)."""
    args = tiny_args(synthetic_root, tmp_path, "--name", "back")
    run = tmp_path / "back"
    assert main(args + ["runtime.stop_after_steps=4"]) == 0
    (run / "step4.pth").write_bytes((run / "last.pth").read_bytes())
    assert main(["--resume", "auto"] + args + ["runtime.stop_after_steps=6"]) == 0  # events up to step 6
    assert [s for s, _ in read_scalars(run / "tensorboard")["loss/total"]] == list(range(1, 7))
    assert main(["--resume", str(run / "step4.pth")] + args) == 0  # back to step 4, on to the end
    assert read_scalars(run / "tensorboard")["loss/total"] == read_scalars(full_run / "tensorboard")["loss/total"]


def test_vicreg_method_runs(synthetic_root, tmp_path):
    assert main(tiny_args(synthetic_root, tmp_path, "--name", "v", "method=vicreg", "optim.epochs=1",
                          "--no-tensorboard")) == 0
    run = tmp_path / "v"
    assert not (run / "tensorboard").exists() and (run / "metrics.jsonl").stat().st_size > 0
    assert yaml.safe_load((run / "config.yaml").read_text())["method"] == "vicreg"
    state = torch.load(run / "mast_state.pth", weights_only=True)
    assert state["method"] == "vicreg" and "mask_logits" not in state
    assert state["heldout"]["delta"].shape == (8, 6)
    assert not any("u_mean/crop" in ln for ln in (run / "metrics.jsonl").read_text().splitlines())


def test_nonfinite_loss_stops_and_keeps_last_good(synthetic_root, tmp_path, capsys):
    # an absurd lr blows the weights up after the warm-up's first non-zero step
    args = tiny_args(synthetic_root, tmp_path, "--name", "nan", "optim.base_lr=1e37",
                     "runtime.save_every_min=1e-9")
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "NaN/Inf at step" in err and "\n" not in err
    bad_step = int(err.split("at step ")[1].split(";")[0])
    last = torch.load(tmp_path / "nan" / "last.pth", weights_only=True)
    assert last["step"] == bad_step - 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def _image_folder(root: Path, n: int, bad: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "a").mkdir(parents=True)
    for i in range(n):
        path = root / "a" / f"{i:03d}.png"
        if i < bad:
            path.write_bytes(b"not a png at all")
        else:
            Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(path)
    return root


def test_corrupt_images_are_counted_and_skipped(tmp_path):
    root = _image_folder(tmp_path / "imgs", 20, 2)
    ds = TwoViewFolder(root, SpatialTwoView(AugmentConfig(size=16)))
    items = [ds[(i, 7)] for i in range(len(ds))]
    assert [int(it[2]) for it in items] == [0, 1] + [-1] * 18
    assert all(it[0].shape == (2, 3, 16, 16) for it in items)


def test_too_many_corrupt_images_stop_the_run(synthetic_root, tmp_path, capsys):
    root = _image_folder(tmp_path / "imgs", 48, 3)  # 6% bad > 1%
    args = tiny_args(synthetic_root, tmp_path, "--name", "bad", f"data.root={root}")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unreadable" in err and "data.max_bad_fraction" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("layout, fragment", [
    ("missing", "no such directory"), ("empty", "no images"), ("loose", "directly in the root")])
def test_bad_dataset_layouts_are_one_line_errors(synthetic_root, tmp_path, capsys, layout, fragment):
    root = tmp_path / "d"
    if layout != "missing":
        root.mkdir()
    if layout == "loose":
        Image.new("RGB", (8, 8)).save(root / "x.png")
    assert main(tiny_args(synthetic_root, tmp_path, f"data.root={root}")) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err


def test_sampler_resumes_mid_epoch_and_shards():
    full = list(ResumableSampler(50, 2, 0, seed=3).__iter__())
    s = ResumableSampler(50, 2, 0, seed=3)
    s.set_epoch(0, start=10)
    assert list(s) == full[10:]
    other = ResumableSampler(50, 2, 1, seed=3)
    assert not {i for i, _ in full} & {i for i, _ in other}
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in full]


def test_atomic_save_keeps_previous_file_on_failure(tmp_path):
    path = tmp_path / "x.pth"
    torch_save_atomic(path, {"a": torch.ones(2)})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        torch_save_atomic(path, {"a": Unpicklable()})
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert os.listdir(tmp_path) == ["x.pth"]
