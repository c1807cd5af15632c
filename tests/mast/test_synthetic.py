"""The synthetic benchmark: determinism, COCO / segmentation consistency, balance, bad input, card."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from mast.data.scenes import COLOR_NAMES, SHAPES, TASKS
from mast.data.synthetic import SyntheticSpec, ensure_dataset, generate, main, shape_color_split

MINI = replace(SyntheticSpec.tiny(), unlabeled=3, per_class=(1, 1, 1), shape_color_per_class=(1, 1, 1),
               scenes=(2, 1))


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_whatever_the_workers(synthetic_root, tmp_path, capsys):
    main(["--out", str(tmp_path / "again"), "--preset", "tiny", "--workers", "1"])  # fixture used 2
    summary = json.loads(capsys.readouterr().out)
    again = file_hashes(tmp_path / "again")
    assert summary["images"] == len([k for k in again if k.endswith(".png") and "/labels/" not in k])
    assert again == file_hashes(synthetic_root)
    seed0 = file_hashes(generate(tmp_path / "seed0", MINI))
    seed1 = file_hashes(generate(tmp_path / "seed1", replace(MINI, seed=1)))
    assert seed0.keys() == seed1.keys()
    assert all(seed0[k] != seed1[k] for k in seed0 if k.startswith("unlabeled/"))


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_masks_boxes_and_semantic_labels_agree(synthetic_root, split):
    scenes = synthetic_root / "scenes"
    coco = COCO(str(scenes / f"annotations/instances_{split}.json"))
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == list(enumerate(SHAPES, 1))
    assert len(coco.imgs) == len(list((scenes / "images" / split).glob("*.png")))
    for image_id, info in coco.imgs.items():
        image = Image.open(scenes / "images" / split / info["file_name"])
        label = np.array(Image.open(scenes / "labels" / split / info["file_name"]))
        assert image.size == (info["width"], info["height"]) and image.mode == "RGB"
        assert label.dtype == np.uint8 and label.shape == (info["height"], info["width"])
        expected = np.zeros_like(label)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert 1 <= len(anns) <= 3
        for ann in anns:
            mask = coco.annToMask(ann).astype(bool)
            assert ann["iscrowd"] == 0 and ann["area"] == mask.sum() > 0
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)  # tight box
            assert not expected[mask].any(), "visible instance masks must not overlap"
            expected[mask] = ann["category_id"]
        np.testing.assert_array_equal(label, expected)


def test_classification_layout_balance_and_heldout_classes(synthetic_root):
    spec = SyntheticSpec.tiny()
    for task, names in TASKS.items():
        for split in ("train", "val", "test"):
            counts = Counter(p.parent.name for p in (synthetic_root / "classification" / task / split).glob("*/*.png"))
            assert set(counts) <= set(names)
            mean = sum(counts.values()) / len(counts)
            assert all(abs(n - mean) <= 0.2 * mean for n in counts.values()), (task, split, counts)
            if task != "shape_color":
                assert len(counts) == len(names)
        assert sum(1 for _ in (synthetic_root / "classification/side/test").glob("*/*.png")) == \
            sum(1 for _ in (synthetic_root / "classification/shape/test").glob("*/*.png"))
    fine = {s: {p.name for p in (synthetic_root / "classification/shape_color" / s).iterdir()}
            for s in ("train", "val", "test")}
    assert len(fine["train"]) == 40 and fine["val"] == fine["test"] and len(fine["test"]) == 24
    assert not fine["train"] & fine["test"]
    for name in fine["test"]:  # held-out pairs are new combinations of seen shapes and seen colors
        shape, color = name.split("_")
        assert any(n.startswith(shape + "_") for n in fine["train"])
        assert any(n.endswith("_" + color) for n in fine["train"])
        assert shape_color_split(SHAPES.index(shape) * len(COLOR_NAMES) + COLOR_NAMES.index(color)) == "heldout"
        assert len(list((synthetic_root / "classification/shape_color/test" / name).glob("*.png"))) == \
            spec.shape_color_per_class[2] >= 6  # enough for 5-way 5-shot + queries
    assert len(list((synthetic_root / "unlabeled/images").glob("*.png"))) == spec.unlabeled
    marker = json.loads((synthetic_root / "COMPLETE").read_text())
    assert marker["files"] + 1 == sum(1 for p in synthetic_root.rglob("*") if p.is_file())  # + COMPLETE


@pytest.mark.parametrize("field,value", [("size", 8), ("size", 64.5), ("seed", -1), ("unlabeled", 0),
                                         ("per_class", (1, 0, 1)), ("scenes", (3,))])
def test_invalid_spec_gives_one_line_error(tmp_path, field, value):
    with pytest.raises(ValueError, match=field) as err:
        generate(tmp_path / "out", replace(MINI, **{field: value}))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_non_empty_out_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit) as err:
        main(["--out", str(out), "--preset", "tiny"])
    assert "--overwrite" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="not empty"):
        ensure_dataset(out, MINI)  # a directory that is not ours is never deleted
    assert (out / "mine.txt").read_text() == "keep me"
    with pytest.raises(SystemExit, match="size"):
        main(["--out", str(tmp_path / "other"), "--preset", "tiny", "--size", "0"])
    generate(out, MINI, overwrite=True)
    assert (out / "COMPLETE").exists() and not (out / "mine.txt").exists()


def test_partial_dataset_is_regenerated_and_complete_one_reused(tmp_path):
    out = generate(tmp_path / "d", MINI)
    reference = file_hashes(out)
    (out / "reuse-sentinel").write_text("")
    assert ensure_dataset(out, MINI) == out and (out / "reuse-sentinel").exists()
    # simulate a killed run: marker written first is there, COMPLETE (written last) is not
    (out / "COMPLETE").unlink()
    (out / ".generating").write_text("{}")
    next(out.glob("scenes/images/train/*.png")).write_bytes(b"truncated")
    ensure_dataset(out, MINI)
    assert file_hashes(out) == reference
    # a finished dataset of another spec is never deleted (it may hold a user's files): one line
    with pytest.raises(ValueError, match="another spec") as err:
        ensure_dataset(out, replace(MINI, seed=3))
    assert "\n" not in str(err.value) and file_hashes(out) == reference


@pytest.mark.slow
def test_card_reports_raw_pixel_accuracy_and_shape_is_far_from_solved(tmp_path):
    spec = replace(SyntheticSpec.tiny(), unlabeled=1, per_class=(20, 8, 20), shape_color_per_class=(1, 6, 6),
                   scenes=(1, 1), card_baseline=True)
    card = json.loads((generate(tmp_path / "card", spec) / "card.json").read_text())
    acc = card["raw_pixel_logreg"]["accuracy"]
    assert set(acc) == set(TASKS)
    assert acc["shape"] <= 50.0
    details = card["raw_pixel_logreg"]["details"]
    # the baseline itself works: color is linearly readable from pixels
    assert acc["color"] >= 2 * details["color"]["chance"]
    assert card["counts"]["classification"]["shape"]["train"]["per_class"] == {s: 20 for s in SHAPES}
    assert "shape" in (tmp_path / "card/CARD.md").read_text()
