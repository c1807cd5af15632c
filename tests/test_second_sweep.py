"""The second fault sweep (issue 27): each test plants the real thing (a symlinked split, a directory
loop, a truncated CIFAR batch, a FIFO named like an image, a 1 x 3,000,000 PNG, ...) and checks the
refusal is one line naming the input, never an ``ok`` record, never a hang."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transfer.checkpoints import build_resnet

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (conftest.py)


@pytest.fixture(scope="module")
def r18(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "r18.pth"
    torch.manual_seed(0)
    torch.save(build_resnet("resnet18").state_dict(), path)
    return path


@pytest.fixture
def no_hang():
    """A FIFO opened for reading blocks forever: fail the test after 60 s instead of hanging the suite."""
    def alarm(signum, frame):
        raise TimeoutError("hung (a FIFO was opened?)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _probe(main, ckpt: Path, data: Path, out: Path, *extra: str) -> tuple[int, dict]:
    code = main(["--ckpt", str(ckpt), "--data", str(data), "--out", str(out), "--image-size", "32",
                 "--no-progress", "--cache-dir", str(out.parent / "cache"), *extra])
    return code, json.loads((out / "record.json").read_text())


def _copy(synthetic_root: Path, tmp_path: Path) -> Path:
    data = tmp_path / "shape"
    shutil.copytree(synthetic_root / "classification" / "shape", data)
    return data


# 1. a split that is a symlink to another split (or holds the same files) is refused


def test_a_split_symlinked_to_another_is_refused_not_ok(synthetic_root, r18, tmp_path, capsys):
    from transfer.probes.knn import main as knn_main
    from transfer.probes.linear import main as linear_main

    data = _copy(synthetic_root, tmp_path)
    shutil.rmtree(data / "test")
    (data / "test").symlink_to("train")
    code, record = _probe(knn_main, r18, data, tmp_path / "knn")
    assert code == 1 and record["status"] == "failed" and not record.get("metrics")
    assert "share" in record["error"] and "'train'" in record["error"] and "\n" not in record["error"]

    data2 = _copy(synthetic_root, tmp_path / "b")
    shutil.rmtree(data2 / "val")
    (data2 / "val").symlink_to("test")
    code, record = _probe(linear_main, r18, data2, tmp_path / "linear")
    assert code == 1 and "'val'" in record["error"] and "share" in record["error"]

    data3 = _copy(synthetic_root, tmp_path / "c")  # a hard-linked copy of one image: same file, other name
    first = sorted((data3 / "train").rglob("*.png"))[0]
    os.link(first, data3 / "test" / first.parent.name / "renamed.png")
    code, record = _probe(knn_main, r18, data3, tmp_path / "knn3")
    assert code == 1 and "share 1 of" in record["error"] and "renamed" not in record["error"]


def test_registry_splits_are_disjoint_by_row_and_file():
    from transfer.probes.readers import Items, LayoutError, check_disjoint

    origins = np.array([[1, 7, 0], [1, 7, 1], [1, 7, 2]], dtype=np.int64)
    items = Items([0, 1, 0], ["a", "b"], array=np.zeros((3, 2, 2, 3), np.uint8), origins=origins)
    check_disjoint(("test", items.subset([2])), [("train", items.subset([0, 1]))], "linear")  # rows differ
    with pytest.raises(LayoutError, match="share 1 of 1"):
        check_disjoint(("test", items.subset([1])), [("train", items.subset([0, 1]))], "linear")


# 2. a directory loop inside a class folder is refused, naming the link


def test_a_directory_loop_in_a_class_folder_is_refused(synthetic_root, r18, tmp_path):
    from mast.data.folder import DatasetError, list_images
    from transfer.probes.knn import main as knn_main

    data = _copy(synthetic_root, tmp_path)
    circle = sorted(p for p in (data / "train").iterdir())[0]
    (circle / "loop").symlink_to("..")
    code, record = _probe(knn_main, r18, data, tmp_path / "knn")
    assert code == 1 and record["status"] == "failed"
    assert str(circle / "loop") in record["error"] and "loop" in record["error"] and "\n" not in record["error"]
    with pytest.raises(DatasetError, match="a folder above it"):  # pretraining lists images the same way
        list_images(data / "train")
    (circle / "loop").unlink()
    (circle / "twin").symlink_to(data / "train" / sorted(p.name for p in (data / "train").iterdir())[1])
    with pytest.raises(DatasetError, match="same folder"):  # another class's folder: images under two labels
        list_images(data / "train")


# 3. CIFAR batches whose data and labels lengths differ are refused, naming the file


def test_a_cifar_batch_with_fewer_labels_than_images_is_refused(tmp_path, r18):
    from probe_standins import cifar
    from transfer.probes.knn import main as knn_main
    from transfer.probes.readers import READERS, LayoutError

    cifar(tmp_path / "c10")
    batch = tmp_path / "c10" / "cifar-10-batches-py" / "data_batch_3"
    with open(batch, "rb") as f:
        entry = pickle.load(f)
    entry["data"] = np.concatenate([entry["data"]] * 2)[:20]
    entry["labels"] = entry["labels"][:5]  # 20 rows, 5 labels: every later label would shift
    with open(batch, "wb") as f:
        pickle.dump(entry, f, protocol=2)
    with pytest.raises(LayoutError, match=f"{batch}: 20 images but 5 labels"):
        READERS["cifar10"](tmp_path / "c10", "train")
    code, record = _probe(knn_main, r18, tmp_path / "c10", tmp_path / "knn", "--dataset", "cifar10")
    assert code == 1 and str(batch) in record["error"] and not record.get("metrics")


def test_registry_readers_name_the_file_they_could_not_read(tmp_path):
    from probe_standins import cifar, flowers102, stl10
    from transfer.probes.datasets import load_split
    from transfer.probes.readers import LayoutError

    cifar(tmp_path / "c10")
    batch = tmp_path / "c10" / "cifar-10-batches-py" / "data_batch_2"
    with open(batch, "wb") as f:  # no 'labels' entry (KeyError 'labels' before)
        pickle.dump({"data": np.zeros((4, 3072), np.uint8)}, f, protocol=2)
    with pytest.raises(LayoutError, match=f"{batch}: no 'labels' entry"):
        load_split(tmp_path / "c10", "train", "cifar10")
    with open(batch, "wb") as f:  # not a whole number of images (a reshape error before)
        pickle.dump({"data": np.zeros(3000, np.uint8), "labels": [0]}, f, protocol=2)
    with pytest.raises(LayoutError, match=f"{batch}: 'data' holds 3000 bytes"):
        load_split(tmp_path / "c10", "train", "cifar10")

    flowers102(tmp_path / "fl")
    mat = next((tmp_path / "fl").rglob("setid.mat"))
    mat.write_bytes(b"not a MATLAB file at all" * 10)  # scipy's MatReadError / ValueError before
    with pytest.raises(LayoutError, match=f"{mat}: not a readable MATLAB file"):
        load_split(tmp_path / "fl", "train", "flowers102")

    stl10(tmp_path / "stl")
    x_file = next((tmp_path / "stl").rglob("train_X.bin"))
    x_file.write_bytes(x_file.read_bytes()[:-100])
    with pytest.raises(LayoutError, match=f"{x_file}: .* not a whole number"):
        load_split(tmp_path / "stl", "train", "stl10")


# 6. a FIFO named x.png is no image: listing skips it, opening it never blocks


def test_a_fifo_named_png_never_hangs_knn_or_pretraining(synthetic_root, r18, tmp_path, no_hang):
    from mast.data.folder import DatasetError, list_images, open_rgb
    from transfer.probes.knn import main as knn_main

    data = _copy(synthetic_root, tmp_path)
    folder = sorted((data / "train").iterdir())[0]
    os.mkfifo(folder / "x.png")
    assert folder / "x.png" not in list_images(data / "train")
    with pytest.raises(DatasetError, match="not a regular file"):
        open_rgb(folder / "x.png")
    code, record = _probe(knn_main, r18, data, tmp_path / "knn")
    assert code == 0 and record["status"] == "ok"
    unlabeled = tmp_path / "unlabeled" / "a"
    unlabeled.mkdir(parents=True)
    shutil.copy(sorted(folder.glob("*.png"))[0], unlabeled / "ok.png")
    os.mkfifo(unlabeled / "y.png")
    assert [p.name for p in list_images(tmp_path / "unlabeled")] == ["ok.png"]


# 7. a tiny file that decodes or resizes to billions of pixels is refused, naming the file


def test_a_1x3000000_png_is_refused_naming_the_file_not_a_memory_error(synthetic_root, r18, tmp_path, monkeypatch):
    from mast.data.folder import DatasetError, center_square, open_rgb
    from transfer.probes.knn import main as knn_main

    data = _copy(synthetic_root, tmp_path)
    bomb = sorted((data / "test").iterdir())[0] / "thin.png"
    Image.new("L", (1, 3_000_000)).save(bomb)
    assert bomb.stat().st_size < 20_000  # a few kB on disk
    with pytest.raises(DatasetError, match="resizing 1x3000000 gives 32x96000000"):
        center_square(open_rgb(bomb), 32)
    code, record = _probe(knn_main, r18, data, tmp_path / "knn")
    assert code == 1 and str(bomb) in record["error"] and "MemoryError" not in record["error"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # PIL's own bomb check, at 2x the limit
    with pytest.raises(DatasetError, match=f"^{bomb}: .*decompression bomb"):
        open_rgb(bomb)
