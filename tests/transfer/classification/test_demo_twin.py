"""The demo's synthetic twin of Table 1: ROOT/imagenet_like (mast/data/imagenet_like.py) in ImageNet's layout with
its generated "1 %" list, the classification engine's --subset-file / --scale demo, and the demo suite's two
classification entries run end to end through run_all into the report's own twin table, with intervals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from classification_fixtures import mmpretrain, r18  # noqa: F401 - fixtures
from mast.data.imagenet_like import FOLDER, SOURCE, SUBSET_FILE, ensure_imagenet_like, synset
from transfer.imagenet import ImageNetLayoutError, imagenet_samples, read_subset_file

TWIN_TASKS = ("linear_demo_imagenet_like", "semisup_demo_imagenet_like_1pct")


def test_twin_layout_and_list_are_imagenet_shaped_and_deterministic(synthetic_root: Path, tmp_path: Path) -> None:
    twin = synthetic_root / FOLDER
    classes = sorted(p.name for p in (synthetic_root / SOURCE / "train").iterdir())
    assert json.loads((twin / "classes.json").read_text()) == {synset(i): c for i, c in enumerate(classes)}
    names = read_subset_file(twin / SUBSET_FILE)
    layout, found, train, val = imagenet_samples(twin, None, None, names=names)
    assert found == [synset(i) for i in range(len(classes))]
    # every class: its own images, the list's names mapped to ImageFolder's index of their synset folder
    per_class = [sum(1 for _, label in train if label == i) for i in range(len(found))]
    sources = [len(list((synthetic_root / SOURCE / "train" / c).glob("*.png"))) for c in classes]
    assert per_class == [max(1, round(0.1 * n)) for n in sources]
    assert all(Path(rel).parent.name == found[label] and Path(rel).name.startswith(found[label] + "_")
               for rel, label in train)
    assert len(val) == sum(len(list((synthetic_root / SOURCE / "val" / c).glob("*.png"))) for c in classes)
    # the same source pixels and seed give the same bytes (a second twin beside a copy of the shape task)
    shutil.copytree(synthetic_root / SOURCE, tmp_path / SOURCE)
    again = ensure_imagenet_like(tmp_path)
    for rel in [SUBSET_FILE, *(str(p.relative_to(twin)) for p in sorted(twin.rglob("*.JPEG"))[:20])]:
        assert (again / rel).read_bytes() == (twin / rel).read_bytes(), rel


def test_subset_file_is_checked_and_is_for_the_demo_scale_only(tmp_path: Path, r18: Path, capsys) -> None:
    from transfer.classification.runner import main

    bad = tmp_path / "list.txt"
    bad.write_text("n00000000_1.JPEG\nnot-a-file-name\n")
    with pytest.raises(ImageNetLayoutError, match=r"1 of 2 lines are not <synset>_<n>.JPEG"):
        read_subset_file(bad)
    assert main(["--ckpt", str(r18), "--out", str(tmp_path / "o"), "--subset-file", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--subset-file is for --scale demo" in err
    assert not (tmp_path / "o" / "record.json").exists()


@pytest.mark.timeout(600)
def test_demo_suite_twin_runs_end_to_end_into_its_table(synthetic_root: Path, r18: Path, tmp_path: Path) -> None:
    from transfer import run_all

    out, report = tmp_path / "out", tmp_path / "report"
    code = run_all.main(["--ckpt", str(r18), "--name", "r18", "--suite", "demo", "--tasks", *TWIN_TASKS,
                         "--var", f"data={synthetic_root}", "--out", str(out), "--report", str(report)])
    assert code == 0
    records = {t: json.loads((out / "r18" / t / "record.json").read_text()) for t in TWIN_TASKS}
    linear, semi = records[TWIN_TASKS[0]], records[TWIN_TASKS[1]]
    assert {r["status"] for r in records.values()} == {"ok"} and {r["scale"] for r in records.values()} == {"demo"}
    assert (linear["dataset"], semi["dataset"]) == ("synthetic/imagenet_like", "synthetic/imagenet_like_1pct")
    listed = read_subset_file(synthetic_root / FOLDER / SUBSET_FILE)
    assert semi["data"]["train_images"] == len(listed) < linear["data"]["train_images"]
    assert semi["data"]["subset_file"] == str((synthetic_root / FOLDER / SUBSET_FILE).resolve())
    assert len(semi["data"]["subset_file_sha256"]) == 64 and semi["data"]["subset"] is None
    # the engine trained on exactly the listed files (its annotation file), labelled by their synset folder
    ann = (out / "r18" / TWIN_TASKS[1] / "ann" / "train.txt").read_text().split("\n")
    assert sorted(Path(line.split()[0]).name for line in ann if line) == sorted(listed)
    for r in records.values():
        for metric in ("top1", "top5"):
            iv = r["intervals"][metric]
            assert iv["lo"] <= r["metrics"][metric] <= iv["hi"] and iv["n_items"] == linear["data"]["val_images"]
    # the 1 % twin is a seed group (demo.yaml): both seeds' runs, their mean and the interval over both
    assert semi["seeds"] == [0, 1] and sorted(semi["per_seed"]) == ["0", "1"] and "top1" in semi["metrics_std"]
    assert semi["intervals"]["top1"]["n_seeds"] == 2 and linear["seeds"] == [0] and not linear["metrics_std"]
    print(f"twin wall times: {[round(json.loads((out / 'r18' / t / 'record.json').read_text())['elapsed_s'], 1) for t in TWIN_TASKS]}")
    text = (report / "index.md").read_text()
    table = text.split("### ImageNet protocols on the synthetic twin")[1].split("###")[0]
    row = next(line for line in table.splitlines() if line.startswith("| r18 |"))
    assert "Twin linear Top-1" in table and 'Twin semi-sup. "1%" Top-1' in table
    assert row.count("±") == 4, row  # top-1/top-5 of both, each with its interval
    assert "73.2" not in table  # VICReg's published row belongs to the paper's Table 1, never to the twin's
