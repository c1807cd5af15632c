"""Tiny stand-ins of VOC2007, Places205 and iNaturalist 2018 in their official download layouts.

Same folder and file names and the same list formats as the real archives (VOCdevkit/VOC2007 with
ImageSets/Main/<cls>_<part>.txt "<id> 1|-1|0" lines and Annotations/*.xml; Places205's
data/vision/torralba/deeplearning/images256 + trainvalsplit_places205/*.csv; iNat18's
train_val2018/<super>/<id>/<hash>.jpg + COCO-style train2018.json / val2018.json), with 8x8 JPEGs
whose colour says their class.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from transfer.vissl_datasets import VOC_CLASSES

__all__ = ["voc07", "places205", "inat18"]


def _jpeg(path: Path, classes: list[int], seed: int, size: int = 8) -> None:
    """A picture whose colour is the mean of its classes' colours, plus a little noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = np.mean([[(c * 80) % 256, (c * 150 + 60) % 256, (c * 40 + 120) % 256] for c in classes], axis=0)
    pixels = np.clip(base + rng.integers(-15, 15, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)


def _voc_objects(i: int) -> list[tuple[int, bool]]:
    """(class, difficult) of image ``i``: one class, a second on every third image; a few difficult."""
    objs = [(i % 20, False)]
    if i % 3 == 0:
        objs.append(((i * 7 + 3) % 20, i % 9 == 0))  # every ninth image: the second object is difficult only
    return objs


def voc07(root: Path, n_trainval: int = 100, n_test: int = 40) -> dict:
    """``root/VOCdevkit/VOC2007``: trainval ids 000005.. and test ids after them, as the two tars merge."""
    folder = root / "VOCdevkit" / "VOC2007"
    main = folder / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (folder / "Annotations").mkdir()
    parts = {"trainval": range(n_trainval), "test": range(n_trainval, n_trainval + n_test)}
    for part, indices in parts.items():
        ids = [f"{2 * i + 5:06d}" for i in indices]
        (main / f"{part}.txt").write_text("".join(f"{x}\n" for x in ids))
        rows = {c: [] for c in range(20)}
        for i, x in zip(indices, ids):
            objs = _voc_objects(i)
            _jpeg(folder / "JPEGImages" / f"{x}.jpg", [c for c, _ in objs], i)
            names = "".join(f"<object><name>{VOC_CLASSES[c]}</name><difficult>{int(d)}</difficult></object>"
                            for c, d in objs)
            (folder / "Annotations" / f"{x}.xml").write_text(
                f"<annotation><folder>VOC2007</folder><filename>{x}.jpg</filename>{names}</annotation>\n")
            state = {c: 0 if d else 1 for c, d in objs}  # VOC: 1 present, -1 absent, 0 difficult only
            for c in range(20):
                rows[c].append(f"{x} {state.get(c, -1):2d}")  # the devkit's "%s %2d" lines
        for c, lines in rows.items():
            (main / f"{VOC_CLASSES[c]}_{part}.txt").write_text("\n".join(lines) + "\n")
    return {"trainval": n_trainval, "test": n_test, "folder": folder}


PLACES_CLASSES = ["a/abbey", "b/bedroom", "f/field/cultivated"]
MORE_PLACES = ["k/kitchen", "o/office", "r/river", "s/ski_slope"]  # ``classes`` > 3 (top-5 needs five)


def places205(root: Path, per_class: dict | None = None, classes: int = 3) -> dict:
    """``root/places205``: images256/<l>/<class>/ and trainvalsplit_places205/{train,val}_places205.csv."""
    per_class = per_class or {"train": 4, "val": 2}
    names = (PLACES_CLASSES + MORE_PLACES)[:classes]
    base = root / "places205"
    images = base / "data" / "vision" / "torralba" / "deeplearning" / "images256"
    split = base / "trainvalsplit_places205"
    split.mkdir(parents=True)
    for part, n in per_class.items():
        lines = []
        for k in range(n * len(names)):
            label = k % len(names)  # the CSVs interleave classes
            rel = f"{names[label]}/gsun_{hashlib.md5(f'{part}{k}'.encode()).hexdigest()}.jpg"
            _jpeg(images / rel, [label], k)
            lines.append(f"{rel} {label}")
        (split / f"{part}_places205.csv").write_text("\n".join(lines) + "\n")
    return {**{p: n * len(names) for p, n in per_class.items()}, "base": base, "classes": len(names)}


INAT_CATEGORIES = [(0, "Aves", "Turdus migratorius"), (1, "Plantae", "Quercus alba"), (2, "Aves", "Corvus corax")]
MORE_INAT = [(3, "Fungi", "Amanita muscaria"), (4, "Plantae", "Acer rubrum"), (5, "Aves", "Pica pica"),
             (6, "Insecta", "Apis mellifera")]  # ``classes`` > 3 (top-5 needs five)


def inat18(root: Path, per_class: dict | None = None, classes: int = 3) -> dict:
    """``root/inat18``: train_val2018/<supercategory>/<id>/<hash>.jpg and {train,val}2018.json."""
    per_class = per_class or {"train": 4, "val": 2}
    base = root / "inat18"
    chosen = (INAT_CATEGORIES + MORE_INAT)[:classes]
    categories = [{"id": i, "name": n, "supercategory": s, "kingdom": "Animalia" if s == "Aves" else "Plantae"}
                  for i, s, n in chosen]
    next_id = 0
    for part, n in per_class.items():
        images, annotations = [], []
        for k in range(n * len(categories)):
            cid, sup, _ = chosen[(k * 2) % len(categories)]
            name = f"train_val2018/{sup}/{cid}/{hashlib.md5(f'{part}{k}'.encode()).hexdigest()}.jpg"
            _jpeg(base / name, [cid], k)
            images.append({"id": next_id, "file_name": name, "width": 8, "height": 8, "license": 1, "rights_holder": "x"})
            annotations.append({"id": next_id, "image_id": next_id, "category_id": cid})
            next_id += 1
        (base / f"{part}2018.json").write_text(json.dumps({"info": {"year": 2018}, "images": images,
                                                            "annotations": annotations, "categories": categories,
                                                            "licenses": []}))
    return {**{p: n * len(categories) for p, n in per_class.items()}, "base": base, "classes": len(categories)}
