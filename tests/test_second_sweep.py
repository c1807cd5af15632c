"""The second fault sweep (issue 27): each test plants the real thing (a symlinked split, a directory
loop, a truncated CIFAR batch, a FIFO named like an image, a 1 x 3,000,000 PNG, ...) and checks the
refusal is one line naming the input, never an ``ok`` record, never a hang."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transfer.backbones.resnet.load import build_resnet

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (conftest.py)


@pytest.fixture(scope="module")
def r18(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "r18.pth"
    torch.manual_seed(0)
    torch.save(build_resnet("resnet18").state_dict(), path)
    return path


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


# 5. an unterminated quote marker is an error in --check and in write mode; nothing is deleted


def test_an_unterminated_quote_marker_fails_check_and_never_deletes_text(tmp_path, capsys):
    from reports import quote

    (tmp_path / "r.md").write_text("# R\n\nreal text\n")
    typed = "intro\n<!-- quote: r.md -->\n> typed by hand, never quoted\n\nmy own paragraph\n"
    block = "<!-- quote: r.md -->\n> old\n<!-- /quote -->\nend\n"
    for text, line in ((typed, 2), (typed + block, 2), ("a\n<!-- /quote -->\n", 2)):
        readme = tmp_path / "README.md"
        readme.write_text(text)
        for argv in (["--check", str(readme)], [str(readme)]):
            assert quote.main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert f"{readme}:{line}:" in err and "\n" not in err, err
        assert readme.read_text() == text  # the hand-typed paragraph and the next block are intact
    readme.write_text("see the `<!-- quote: r.md -->` markers\n" + block)  # a mention in prose is no marker
    assert quote.main([str(readme)]) == 0 and "> real text" in readme.read_text()


def test_a_binary_readme_is_one_line(tmp_path, capsys):
    from reports import quote

    (tmp_path / "README.md").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256)))
    assert quote.main(["--check", str(tmp_path / "README.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not UTF-8" in err and "\n" not in err


# 8, 11, 12. run_all's options: --task-args that take over --out, unbalanced quotes, a self-referring --var,
# OUT/<name> that is a file


def test_task_args_setting_run_all_options_or_unbalanced_are_refused(tmp_path, capsys):
    from transfer.run_all import main as run_all_main

    torch.save(build_resnet("resnet18").state_dict(), tmp_path / "base.pth")
    out = ["--ckpt", str(tmp_path / "base.pth"), "--out", str(tmp_path / "X"), "--no-report", "--tasks", "knn"]
    for task_args, needle in (("knn=--out " + str(tmp_path / "DIR"), "--out is set by run_all"),
                              ("knn=--ou DIR", "--ou is set by run_all"), ("knn=--out=DIR", "set by run_all"),
                              ("knn_shape=--scale paper", "--scale is set by run_all"),
                              ("knn=--k '20", "no closing quotation")):
        assert run_all_main([*out, "--task-args", task_args]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err
    assert run_all_main([*out, "--var", "data={data}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "vars.data = '{data}' refers to itself" in err and "\n" not in err
    assert not (tmp_path / "DIR").exists() and not (tmp_path / "X").exists()
    (tmp_path / "X").mkdir()
    (tmp_path / "X" / "base").write_text("a user's file named like the checkpoint")
    assert run_all_main(out) == 2
    err = capsys.readouterr().err.strip()
    assert f"{tmp_path / 'X' / 'base'}: exists and is not a folder" in err and "\n" not in err


# 9. study --plan writes nothing and checks its options


def test_study_plan_writes_nothing_and_refuses_bad_options(tmp_path, capsys):
    from transfer.orchestrate import study

    where = ["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
             "--report", str(tmp_path / "report")]
    assert study.main(["--plan", *where]) == 0
    assert "Expected duration" in capsys.readouterr().out and list(tmp_path.iterdir()) == []
    (tmp_path / "passwd").write_text("root:x:0:0\n")
    for bad, needle in ((["--seeds", "-1"], "--seeds -1"), (["--seeds", "1" * 20], "2**32"),
                        (["--seeds", "0", "0"], "each seed once"), (["--tasks", "knnn"], "--tasks knnn"),
                        (["--runs", str(tmp_path / "passwd")], "is not a folder"), (["--epochs", "0"], "--epochs 0"),
                        (["--set", "optim.nope=1"], "unknown key"), (["--set", "noequals"], "noequals")):
        assert study.main(["--plan", *where, *bad]) == 2, bad
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwd"]


# 10. reports.build never overwrites a file it did not write; a damaged manifest is read safely


def test_build_keeps_a_users_index_and_survives_a_bad_manifest(tmp_path, capsys):
    from reports import build

    res = tmp_path / "res"
    res.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "results.jsonl", res / "results.jsonl")
    out = tmp_path / "report"
    out.mkdir()
    (out / "index.md").write_text("my own notes")
    with pytest.warns(UserWarning):
        assert build.main(["--results", str(res), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "index.md exists and was not written by reports.build" in err and "\n" not in err
    assert (out / "index.md").read_text() == "my own notes" and not (out / "tables.md").exists()
    (out / "index.md").rename(tmp_path / "notes.md")
    with pytest.warns(UserWarning):
        assert build.main(["--results", str(res), "--out", str(out)]) == 0
    ours = json.loads((out / build.MANIFEST).read_text())
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "precious.txt").write_text("x")
    (out / build.MANIFEST).write_text(json.dumps(["..", "../keep/precious.txt", 3, None, {"a": 1}, *ours]))
    with pytest.warns(UserWarning, match="are not file names of this folder"):  # bad entries: ignored
        assert build.main(["--results", str(res), "--out", str(out)]) == 0
    assert (tmp_path / "keep" / "precious.txt").exists()
    assert set(json.loads((out / build.MANIFEST).read_text())) == set(ours)
    for manifest, needle in (('{"not": "a hash"}', "is not a mapping of file names to their sha256"),
                             ("[not json", "is unreadable")):
        (out / build.MANIFEST).write_text(manifest)  # which files are ours is unknown: refuse, one line
        with pytest.warns(UserWarning):
            assert build.main(["--results", str(res), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "cannot tell which files it wrote" in err and "\n" not in err
    assert (tmp_path / "keep" / "precious.txt").exists()


# 11. one line instead of a traceback


def test_out_that_cannot_be_created_is_one_line(tmp_path, synthetic_root, capsys):
    from conftest import tiny_args
    from mast.pretrain import main as pretrain_main
    from transfer.convert import main as convert_main

    torch.save(build_resnet("resnet18").state_dict(), tmp_path / "r18.pth")
    (tmp_path / "afile").write_text("x")
    for out in ("/proc/nope/x.pth", "/proc/nope", str(tmp_path / "afile" / "x.pth")):
        assert convert_main(["--ckpt", str(tmp_path / "r18.pth"), "--to", "mmseg", "--out", out]) == 1
        err = capsys.readouterr().err.strip()
        assert "cannot be written" in err and out in err and "\n" not in err and "Errno" not in err, err
    assert pretrain_main(tiny_args(synthetic_root, Path("/proc/nope"), "--name", "x")) == 2
    err = capsys.readouterr().err.strip()
    assert "/proc/nope/x: cannot create the folder" in err and "\n" not in err


def test_disk_full_on_the_first_byte_says_no_zero_mib(tmp_path):
    import errno

    from plumbing.atomic import DiskFullError, atomic_write

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError) as err:
        atomic_write(tmp_path / "r.json", full)
    assert "0.0 MiB" not in str(err.value) and "needs" not in str(err.value) and "free" in str(err.value)
    assert str(err.value).startswith(str(tmp_path / "r.json"))


def test_report_inputs_with_a_list_metric_or_string_checkpoint_are_skipped_in_one_line(tmp_path, capsys):
    from reports import build

    records = [json.loads(ln) for ln in (Path(__file__).parent / "data" / "results.jsonl").read_text().splitlines()
               if ln.startswith("{") and ln.rstrip().endswith("}")]
    records[0]["metrics"] = {"top1_k20": [81.25, 1.0]}
    records[1]["checkpoint"] = "mast.pth"
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.warns(UserWarning) as caught:
        assert build.main(["--results", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    said = [str(w.message) for w in caught]
    assert any("metric 'top1_k20' is a list" in m for m in said) and any("'checkpoint' is a str" in m for m in said)


def test_detection_empty_dataset_override_is_one_line(tmp_path, r18, capsys):
    from transfer.detection.runner import main as detection_main

    config = Path(__file__).resolve().parents[1] / "detectron_configs" / "demo_synthetic_R_18_FPN.yaml"
    code = detection_main(["--ckpt", str(r18), "--config", str(config), "--out", str(tmp_path / "o"),
                           "DATASETS.TEST", "()"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "DATASETS.TEST ()" in err and "non-empty" in err and "\n" not in err
