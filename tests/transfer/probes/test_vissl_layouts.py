"""VOC2007, Places205 and iNat18 in their official layouts: readers, one-line refusals of partial
downloads, ``--check``, and ``svm_voc07`` from run_all --smoke into the linear-transfer table."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from transfer.orchestrate.dataset_check import check_suite
from transfer.probes.datasets import LayoutError, load_split
from transfer.probes.vissl_readers import VOC_CLASSES
from transfer.orchestrate.suite import load_suite
from vissl_standins import INAT_CATEGORIES, PLACES_CLASSES, inat18, places205, voc07

pytestmark = pytest.mark.usefixtures("one_thread")


def test_voc07_reads_the_devkit_lists_as_vissl_does(tmp_path):
    made = voc07(tmp_path)
    train, test = load_split(tmp_path, "train", "voc07"), load_split(tmp_path, "test", "voc07")
    assert len(train) == made["trainval"] and len(test) == made["test"] and train.classes == list(VOC_CLASSES)
    assert [p.name for p in train.paths[:2]] == ["000005.jpg", "000007.jpg"]  # sorted ids, JPEGImages/<id>.jpg
    assert train.paths == sorted(train.paths)
    # image 0 (000005): aeroplane present ("000005  1"), boat difficult only ("000005  0"), the rest absent ("-1")
    row = train.targets[0].tolist()
    assert row[0] == 1 and row[VOC_CLASSES.index("boat")] == -1 and row.count(0) == 18
    assert train.labels[0] == 0  # the cache's single label: the first present class
    line = (made["folder"] / "ImageSets/Main/boat_trainval.txt").read_text().splitlines()[0]
    assert line == "000005  0"  # the devkit's own "%s %2d" format
    for root in (tmp_path / "VOCdevkit", made["folder"]):  # the devkit or VOC2007 folder itself also works
        assert len(load_split(root, "test", "voc07")) == made["test"]
    with pytest.raises(LayoutError, match="no 'val' split"):
        load_split(tmp_path, "val", "voc07")


def test_partial_voc07_is_refused_in_one_line(tmp_path):
    made = voc07(tmp_path)
    for name in ("000207.jpg", "000209.jpg"):  # two test images never unpacked
        (made["folder"] / "JPEGImages" / name).unlink()
    with pytest.raises(LayoutError) as e:
        load_split(tmp_path, "test", "voc07")
    msg = str(e.value)
    assert "\n" not in msg and "2 of 40 images" in msg and "JPEGImages/000207.jpg" in msg and str(made["folder"]) in msg
    (made["folder"] / "ImageSets/Main/cat_trainval.txt").unlink()
    with pytest.raises(LayoutError, match=r"1 of 20 per-class lists of trainval are missing \(first: cat_trainval.txt\)"):
        load_split(tmp_path, "train", "voc07")
    with pytest.raises(LayoutError, match="ImageSets/Main not found under .*tried .*VOCdevkit/VOC2007"):
        load_split(tmp_path / "elsewhere", "train", "voc07")


def test_places205_reads_the_official_csv_split(tmp_path):
    made = places205(tmp_path)
    train = load_split(made["base"], "train", "places205")
    assert len(train) == made["train"] and train.classes == [c.split("/", 1)[1] for c in PLACES_CLASSES]
    assert train.labels[:3] == [0, 1, 2]  # the CSV's order and labels
    assert "data/vision/torralba/deeplearning/images256/a/abbey/" in train.paths[0].as_posix()
    assert len(load_split(tmp_path, "val", "places205")) == made["val"]  # the root holding places205/ too
    victim = train.paths[1]
    victim.unlink()
    with pytest.raises(LayoutError) as e:
        load_split(made["base"], "train", "places205")
    assert "1 of 12 images listed in train_places205.csv are missing" in str(e.value)
    assert "b/bedroom/" in str(e.value) and "\n" not in str(e.value)
    csv = made["base"] / "trainvalsplit_places205" / "val_places205.csv"
    csv.write_text(csv.read_text().replace(" 2\n", " 0\n", 1))  # a label given to two class folders
    with pytest.raises(LayoutError, match="label 0 is given to images of a/abbey and of f/field/cultivated"):
        load_split(made["base"], "val", "places205")


def test_inat18_reads_the_coco_style_json(tmp_path):
    made = inat18(tmp_path)
    val = load_split(made["base"], "val", "inat18")
    assert len(val) == made["val"] and val.classes == [n for _, _, n in INAT_CATEGORIES]
    for path, label in zip(val.paths, val.labels):  # train_val2018/<supercategory>/<category id>/<hash>.jpg
        assert path.parts[-4] == "train_val2018" and int(path.parts[-2]) == label
        assert path.parts[-3] == INAT_CATEGORIES[label][1]
    train = load_split(tmp_path, "train", "inat18")
    shutil.rmtree(train.paths[0].parent)  # a whole category folder missing
    with pytest.raises(LayoutError, match=r"4 of 12 images listed in train2018.json are missing \(first: train_val2018/Aves/0/"):
        load_split(made["base"], "train", "inat18")
    (made["base"] / "val2018.json").write_text(json.dumps({"images": []}))
    with pytest.raises(LayoutError, match="val2018.json: not an iNat18 annotation file .*KeyError"):
        load_split(made["base"], "val", "inat18")


def test_check_finds_voc07_and_names_a_partial_one(tmp_path):
    made = voc07(tmp_path)
    out = io.StringIO()
    suite = load_suite("paper", {"datasets": str(tmp_path)}, ["svm"])
    assert [t.name for t in suite.tasks] == ["svm_voc07"]
    assert check_suite(suite, out) == 0
    assert f"svm_voc07: found {made['folder']} (20 classes; train 100, test 40)" in out.getvalue()
    (made["folder"] / "JPEGImages" / "000005.jpg").unlink()
    out = io.StringIO()
    assert check_suite(suite, out) == 1
    line = out.getvalue().splitlines()[0]
    assert line.startswith("svm_voc07: unreadable") and "1 of 100 images" in line and "000005.jpg" in line
    assert f"expected {made['folder']}/JPEGImages/, Annotations/, ImageSets/Main/" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    out = io.StringIO()  # no VOC at all: missing (the task is skipped), not unreadable
    assert check_suite(load_suite("paper", {"datasets": str(empty)}, ["svm"]), out) == 1
    assert out.getvalue().startswith(f"svm_voc07: missing {empty}/VOCdevkit/VOC2007; expected")


def test_smoke_svm_voc07_lands_in_the_linear_transfer_table_beside_vicreg(tmp_path):
    """run_all --suite paper --smoke --tasks svm on the VOC2007 stand-in, then reports.build: the VOC07
    mAP column holds the measured number with its interval and, apart, VICReg's published 86.6."""
    from reports import build
    from transfer.orchestrate import run_all

    voc07(tmp_path / "data")
    ckpt = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), ckpt)
    runs = tmp_path / "runs"
    argv = ["--ckpt", str(ckpt), "--suite", "paper", "--smoke", "--tasks", "svm", "--var", f"datasets={tmp_path / 'data'}",
            "--out", str(runs), "--no-report", "--task-args", "svm=--cache-dir " + str(tmp_path / "cache")]
    assert run_all.main(argv) == 0
    (record,) = [json.loads(x) for x in (runs / "results.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["scale"] == "smoke" and record["task_name"] == "svm_voc07"
    assert record["config"]["costs"] == [0.1, 1.0] and record["headline"] == "mAP"
    assert record["intervals"]["mAP"]["n_items"] == 40
    build.build(runs / "results.jsonl", tmp_path / "report", command="pytest")
    md = (tmp_path / "report" / "tables.md").read_text()
    section = md.split("## Linear classification transfer")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert "VOC07" in rows[0] and "mAP" in section
    mine = next(line for line in rows if line.startswith("| r18"))
    assert f"{record['metrics']['mAP']:.1f}" in mine
    assert rows[-1].startswith("| *VICReg ResNet-50 (published)*") and "*86.6*" in rows[-1]
