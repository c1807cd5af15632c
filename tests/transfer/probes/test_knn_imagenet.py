"""ImageNet kNN (DINO ``eval_knn.py``) through the probes' dataset registry, on stand-ins of both download layouts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torchvision

from imagenet_standins import SYNSETS, write_jpeg, folders_standin, kaggle_standin
from transfer.imagenet import imagenet_samples, read_subset
from transfer.probes.datasets import load_split
from transfer.probes.readers import LayoutError

pytestmark = pytest.mark.usefixtures("one_thread")
STANDINS = {"folders": folders_standin, "kaggle": kaggle_standin}


@pytest.fixture(scope="module")
def r18(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.mark.parametrize("layout", sorted(STANDINS))
def test_registry_reads_imagenet_as_the_classification_engine_does(layout: str, tmp_path: Path) -> None:
    """The probes' ``imagenet`` entry gives the files and ImageFolder labels of ``transfer.imagenet`` (which
    tests/transfer/classification/test_classification.py holds against torchvision's ImageFolder), and marks a small copy inexact."""
    root = STANDINS[layout](tmp_path / "in")
    found, classes, train, val = imagenet_samples(root, expect=None)
    for split, expected in (("train", train), ("val", val)):
        items = load_split(root, split, "imagenet")
        assert items.classes == classes == SYNSETS
        assert [(str(p), y) for p, y in zip(items.paths, items.labels)] == \
            [(str(found.base / rel), y) for rel, y in expected]
        assert items.info["exact"] is False and items.info["layout"] == layout and items.info["part"] == split
    with pytest.raises(LayoutError, match="no .test. split"):
        load_split(root, "test", "imagenet")


def test_flat_val_without_its_csv_is_one_line(tmp_path: Path) -> None:
    root = kaggle_standin(tmp_path / "in")
    os.remove(root / "LOC_val_solution.csv")
    with pytest.raises(LayoutError) as e:
        load_split(root, "val", "imagenet")
    assert "LOC_val_solution.csv" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("layout", sorted(STANDINS))
def test_knn_on_imagenet_finds_each_val_image_class(layout: str, r18: Path, tmp_path: Path) -> None:
    """Each class painted its own colour: the nearest training image of every validation image is of its class,
    so k = 1 is 100 % unless files and labels were paired wrongly (e.g. the Kaggle CSV misread)."""
    from transfer.probes import knn

    root = STANDINS[layout](tmp_path / "in", n_train=3, colour=True)
    out = tmp_path / "out"
    argv = ["--ckpt", str(r18), "--data", str(root), "--dataset", "imagenet", "--out", str(out), "--scale", "demo",
            "--image-size", "32", "--normalize", "imagenet", "--train-split", "train", "--test-split", "val",
            "--k", "1", "20", "--num-workers", "0", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert knn.main(argv) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["dataset"] == "imagenet" and record["headline"] == "top1_k20"
    assert record["metrics"]["top1_k1"] == 100.0
    assert record["details"]["n_bank"] == 18 and record["details"]["n_test"] == 6
    assert record["details"]["k_used"] == {"k1": 1, "k20": 18}


def test_paper_smoke_of_table_one_tasks_by_name_lands_in_the_reports(r18: Path, tmp_path: Path) -> None:
    """Issue 34's command: ``run_all --suite paper --smoke --tasks linear_imagenet semisup_imagenet_1pct
    knn_imagenet svm_voc07`` on stand-ins of the official layouts; the records build the Table-1, linear-transfer
    and kNN tables, the published rows apart from the measured ones."""
    from reports import build
    from transfer.orchestrate import run_all
    from vissl_standins import voc07

    data = tmp_path / "data"
    kaggle_standin(data / "imagenet", n_train=3, colour=True)
    for name in read_subset("1percent")[:2]:  # two of SimCLR's 1 % files: what --smoke's fine-tuning trains on
        write_jpeg(data / "imagenet" / "ILSVRC" / "Data" / "CLS-LOC" / "train" / name.split("_")[0] / name, 7,
              colour=(128, 128, 128))
    voc07(data)
    runs = tmp_path / "runs"
    argv = ["--ckpt", str(r18), "--suite", "paper", "--smoke", "--var", f"datasets={data}", "--out", str(runs),
            "--no-report", "--tasks", "linear_imagenet", "semisup_imagenet_1pct", "knn_imagenet", "svm_voc07",
            "--task-args", f"knn=--cache-dir {tmp_path / 'cache'}", "--task-args", f"svm=--cache-dir {tmp_path / 'cache'}"]
    assert run_all.main(argv) == 0
    records = {r["task_name"]: r for r in map(json.loads, (runs / "results.jsonl").read_text().splitlines())}
    assert sorted(records) == ["knn_imagenet", "linear_imagenet", "semisup_imagenet_1pct", "svm_voc07"]
    assert all(r["status"] == "ok" and r["scale"] == "smoke" for r in records.values()), \
        {n: (r["status"], r.get("error")) for n, r in records.items()}
    build.build(runs / "results.jsonl", tmp_path / "report", command="pytest")
    md = (tmp_path / "report" / "tables.md").read_text()
    sections = {s.split("\n")[0]: s for s in md.split("\n## ")}
    table1 = next(s for t, s in sections.items() if t.startswith("ImageNet linear and semi-supervised"))
    assert "ImageNet linear" in table1 and "Semi-sup. 1%" in table1 and "*73.2*" in table1  # VICReg Table 1
    assert "*86.6*" in next(s for t, s in sections.items() if t.startswith("Linear classification transfer"))
    knn_table = next(s for t, s in sections.items() if t.startswith("k-NN classification"))
    assert "ImageNet" in knn_table and "ImageNet linear" not in knn_table
