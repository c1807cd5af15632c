"""The probes' dataset registry on tiny stand-ins of every download layout (no downloads): readers,
AugSelf's splits, per-dataset metric, explicit preprocessing, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from probe_standins import BUILDERS, build_all
from transfer.probes import fewshot, knn, linear
from transfer.probes.datasets import REGISTRY, load_split, random_split_indices
from transfer.probes.features import NORMALIZATIONS

# (train, val, test) sizes each stand-in must give: random_split lengths scaled to the stand-in
# (AugSelf's ratio), official parts as written, per-class counts as the protocol says
EXPECTED = {
    "cifar10": (54, 6, 12), "cifar100": (27, 3, 30), "stl10": (18, 2, 10), "food101": (18, 2, 6),
    "pets": (12, 3, 6), "mit67": (13, 2, 6), "dtd": (6, 6, 6), "flowers102": (6, 6, 6), "aircraft": (6, 6, 6),
    "caltech101": (50, 10, 6), "sun397": (80, 20, 6), "cub200": (25, 25, 10), "cars": (17, 3, 6),
}
FEWSHOT = {"cub200": ("train+test", 60), "fc100": ("test", 42), "plant_disease": ("train+test", 35)}


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (conftest.py)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A checkpoint from elsewhere: a plain torchvision state_dict, no run config beside it."""
    path = tmp_path_factory.mktemp("ckpt") / "external_r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("datasets")
    return root, build_all(root)


def _common(ckpt: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """The probes' options; ``--scale demo`` unless given (a registry --dataset defaults to paper)."""
    scale = [] if "--scale" in extra else ["--scale", "demo"]
    return ["--ckpt", str(ckpt), "--data", str(data), "--out", str(out), "--cache-dir", str(out.parent / "cache"),
            "--no-progress", "--batch-size", "64", *scale, *extra]


def _record(out: Path) -> dict:
    return json.loads((out / "record.json").read_text())


def test_augself_cifar10_split_is_pinned():
    """random_split(50,000, [45,000, 5,000], Generator().manual_seed(43)): sizes and first indices.

    If torch ever changes its CPU generator or randperm, this fails instead of moving the split.
    """
    (train, val), exact = random_split_indices(50000, (45000, 5000), 43)
    assert exact and (len(train), len(val)) == (45000, 5000)
    assert train[:6] == [5588, 45689, 25537, 42060, 5685, 37915]
    assert val[:6] == [22846, 30903, 12610, 24867, 33057, 6780]
    assert sorted(train + val) == list(range(50000))
    assert random_split_indices(50000, (45000, 5000), 43)[0][1][:6] == val[:6]  # stable across calls
    (train44, _), _ = random_split_indices(50000, (45000, 5000), 44)
    assert train44[:3] == [19732, 39639, 13863]  # CIFAR-100's seed gives another split
    (small, small_val), exact = random_split_indices(60, (45000, 5000), 43)
    assert not exact and (len(small), len(small_val)) == (54, 6)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_linear_and_knn_on_every_download_layout(name, standins, ckpt, tmp_path):
    root, counts = standins
    data, protocol = root / name, REGISTRY[name]
    sizes = [len(load_split(data, s, name)) for s in ("train", "val", "test")]
    assert tuple(sizes) == EXPECTED[name]

    out = tmp_path / "linear"
    assert linear.main(_common(ckpt, data, out, "--dataset", name, "--image-size", "32", "--max-iter", "5")) == 0
    rec = _record(out)
    assert rec["status"] == "ok" and rec["dataset"] == name
    d = rec["details"]
    assert (d["n_train"], d["n_val"], d["n_test"]) == EXPECTED[name]
    assert d["metric"] == protocol.metric and ("class_avg" in rec["metrics"]) == (protocol.metric == "class_avg")
    assert rec["headline"] == protocol.metric and protocol.metric in rec["intervals"]
    assert rec["splits"]["train"]["classes"] == counts[name]["classes"]
    assert rec["preprocess"] == {"resize": 32, "crop": 32, "interpolation": "bicubic", "normalize": "imagenet",
                                 "mean": list(NORMALIZATIONS["imagenet"][0]), "std": list(NORMALIZATIONS["imagenet"][1])}
    if protocol.split == "random":
        assert rec["splits"]["val"]["kind"] == "random_split" and rec["splits"]["val"]["seed"] == protocol.seed

    out = tmp_path / "knn"
    assert knn.main(_common(ckpt, data, out, "--dataset", name, "--image-size", "32", "--train-split", "trainval")) == 0
    rec = _record(out)
    class_avg = {"class_avg_k20", "class_avg_k200"} if protocol.metric == "class_avg" else set()
    assert rec["status"] == "ok" and set(rec["metrics"]) == {"top1_k20", "top1_k200"} | class_avg
    assert rec["headline"] == ("class_avg_k20" if class_avg else "top1_k20")  # the registry's metric
    assert (rec["details"]["n_bank"], rec["details"]["n_test"]) == (sizes[0] + sizes[1], sizes[2])


@pytest.mark.parametrize("name", sorted(FEWSHOT))
def test_fewshot_reads_cub_official_layout_and_the_folders(name, standins, ckpt, tmp_path):
    root, counts = standins
    split, n_images = FEWSHOT[name]
    out = tmp_path / "fewshot"
    assert REGISTRY[name].fewshot == split  # the default --split: AugSelf's pooling
    argv = _common(ckpt, root / name, out, "--dataset", name, "--image-size", "32",
                   "--ways", "2", "--shots", "1", "--queries", "2", "--episodes", "4")
    assert fewshot.main(argv) == 0
    rec = _record(out)
    assert rec["status"] == "ok" and rec["details"]["n_images"] == n_images
    assert rec["details"]["n_classes"] == counts[name]["classes"]


def test_augself_split_file_and_imagefolder_without_val(standins, ckpt, tmp_path):
    root, _ = standins
    split_file = tmp_path / "caltech101.pth"
    torch.save(([0, 1, 2, 40, 41], [3, 42], [4, 5, 43]), split_file)
    assert [len(load_split(root / "caltech101", s, "caltech101", split_file)) for s in ("train", "val", "test")] \
        == [5, 2, 3]
    assert load_split(root / "caltech101", "val", "caltech101", split_file).info["kind"] == "split_file"
    torch.save(([0, 999], [1], [2]), split_file)
    with pytest.raises(ValueError, match="no valid index list 0"):
        load_split(root / "caltech101", "train", "caltech101", split_file)

    # a user's ImageFolder with train/ and test/ only: a seeded stratified 10 % of train validates
    out = tmp_path / "linear"
    data = root / "plant_disease"
    assert linear.main(_common(ckpt, data, out, "--image-size", "32", "--max-iter", "5")) == 0
    rec = _record(out)
    assert rec["splits"]["val"]["kind"] == "stratified" and rec["splits"]["val"]["n"] == 5  # one per class
    assert rec["details"]["n_train"] + rec["details"]["n_val"] == 20
    out = tmp_path / "knn"  # the kNN bank stays the whole train/ folder
    assert knn.main(_common(ckpt, data, out, "--image-size", "32")) == 0
    assert _record(out)["details"]["n_bank"] == 20 and _record(out)["splits"]["train"]["kind"] == "folders"


def test_image_size_and_normalize_reach_the_network(standins, ckpt, tmp_path):
    root, _ = standins
    seen = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, args: seen.append(args[0].detach().clone()) if isinstance(m, torchvision.models.ResNet) else None)
    try:
        out = tmp_path / "knn"
        argv = _common(ckpt, root / "stl10", out, "--dataset", "stl10", "--image-size", "96", "--normalize", "stl10",
                       "--train-split", "trainval", "--k", "3")
        assert knn.main(argv) == 0
    finally:
        handle.remove()
    batch = seen[0]
    assert batch.shape[1:] == (3, 96, 96)
    # the first image of the bank: the first index of AugSelf's STL-10 split (seed 50) into train_X.bin,
    # as the binary file holds it (column-major), normalised by STL-10's statistics
    order = torch.utils.data.random_split(range(20), [18, 2], generator=torch.Generator().manual_seed(50))[0].indices
    raw = np.fromfile(root / "stl10" / "stl10_binary" / "train_X.bin", dtype=np.uint8).reshape(-1, 3, 96, 96)
    expected = torch.from_numpy(raw[order[0]].transpose(0, 2, 1).copy()).float() / 255
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZATIONS["stl10"])
    assert torch.allclose(batch[0], (expected - mean) / std, atol=1e-5)
    rec = _record(out)
    assert rec["preprocess"]["normalize"] == "stl10" and rec["preprocess"]["crop"] == 96
    assert rec["config"]["image_size"] == 96 and rec["config"]["normalize"] == "stl10"


def test_paper_scale_knn_resizes_by_0875_and_uses_four_k(standins, ckpt, tmp_path):
    root, _ = standins
    out = tmp_path / "knn"
    argv = _common(ckpt, root / "dtd", out, "--dataset", "dtd", "--scale", "paper", "--image-size", "32",
                   "--train-split", "trainval")
    assert knn.main(argv) == 0
    rec = _record(out)
    assert rec["preprocess"]["resize"] == 37 and rec["preprocess"]["crop"] == 32  # round(32 / 0.875)
    assert set(rec["metrics"]) == {"top1_k10", "top1_k20", "top1_k100", "top1_k200"}


def test_refusals_are_one_line(standins, ckpt, tmp_path, capsys):
    root, _ = standins
    # an external checkpoint at paper scale without --image-size
    out = tmp_path / "nosize"
    assert linear.main(_common(ckpt, root / "dtd", out, "--dataset", "dtd", "--scale", "paper")) == 1
    rec = _record(out)
    assert rec["status"] == "failed" and "--image-size" in rec["error"] and "\n" not in rec["error"]
    # evaluating on the training split
    out = tmp_path / "same"
    assert knn.main(_common(ckpt, root / "dtd", out, "--dataset", "dtd", "--image-size", "32",
                            "--train-split", "trainval", "--test-split", "val")) == 1
    assert "refused" in _record(out)["error"]
    out = tmp_path / "same2"
    assert knn.main(_common(ckpt, root / "plant_disease", out, "--image-size", "32",
                            "--train-split", "train", "--test-split", "train")) == 1
    assert "refused" in _record(out)["error"]
    # a bad --normalize and a missing layout name what is wrong
    out = tmp_path / "norm"
    assert linear.main(_common(ckpt, root / "dtd", out, "--dataset", "dtd", "--normalize", "0.5/0.5")) == 1
    assert "--normalize" in _record(out)["error"]
    out = tmp_path / "layout"
    assert linear.main(_common(ckpt, root / "dtd", out, "--dataset", "cifar10", "--image-size", "32")) == 1
    assert "cifar-10-batches-py" in _record(out)["error"]


def test_cifar_pickles_are_read_without_running_their_code(tmp_path):
    """A batch file whose pickle calls a function (here os.system) is refused before it runs."""
    BUILDERS["cifar10"](tmp_path)
    evil = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    with pytest.raises(ValueError, match="os.system is not allowed"):
        load_split(tmp_path, "train", "cifar10")
    assert not (tmp_path / "pwned").exists()


def test_paper_suite_refuses_an_external_checkpoint_without_size(standins, ckpt, tmp_path, capsys):
    """run_all in this process (its tasks are subprocesses, run side by side to save interpreter start-ups)."""
    from transfer.orchestrate import run_all

    root, _ = standins
    argv = ["--ckpt", str(ckpt), "--suite", "paper", "--tasks", "fewshot", "--var", f"datasets={root}",
            "--out", str(tmp_path / "runs"), "--no-report", "--jobs", "3"]
    assert run_all.main(argv) == 1
    records = [json.loads(line) for line in (tmp_path / "runs" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["status"] == "failed" and "--image-size" in r["error"] for r in records)


def test_paper_suite_has_the_linear_suite_and_knn_on_one_dataset_root():
    from transfer.orchestrate.suite import load_suite

    suite = load_suite("paper", {"datasets": "/d", "image_size": "96", "normalize": "stl10"}, ["linear", "knn"])
    for task in ("linear", "knn"):
        entries = {t.args["dataset"]: t for t in suite.tasks if t.task == task}
        assert set(entries) == set(EXPECTED) | ({"imagenet"} if task == "knn" else set())  # + DINO's ImageNet kNN
        assert all(t.args["data"] == f"/d/{name}" and t.args["image_size"] == "96" for name, t in entries.items())
    knn = {t.args["dataset"]: t.args for t in suite.tasks if t.task == "knn"}
    assert all(a["train_split"] == "trainval" for name, a in knn.items() if name != "imagenet")
    assert (knn["imagenet"]["train_split"], knn["imagenet"]["test_split"]) == ("train", "val")  # bank train, queries val
