"""Tiny stand-ins of the probe datasets, each in its download layout (built in the test; no download).

Every builder writes ``ROOT/<registry name>/...`` as the real archive unpacks (or as torchvision's
``download=True`` lays it out) with a few 8x8 images per class, and returns the number of images
per official part, so tests can check split sizes.
"""

from __future__ import annotations

import json
import pickle
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["BUILDERS", "build_all"]


def _img(path: Path, label: int, i: int, size: int = 8) -> None:
    """A small picture whose colour says its class (plus a little per-image noise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(label * 1000 + i)
    base = np.array([(label * 80) % 256, (label * 150 + 60) % 256, (label * 40 + 120) % 256], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def _array(labels: list[int], side: int) -> np.ndarray:
    out = np.empty((len(labels), side, side, 3), dtype=np.uint8)
    for i, y in enumerate(labels):
        out[i] = (y * 80) % 256
        out[i, : side // 2] = (y * 40 + 100) % 256
    return out


def cifar(root: Path, hundred: bool = False, per_batch: int = 12, classes: int = 3) -> dict:
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    key = "fine_labels" if hundred else "labels"
    for j, name in enumerate(names + ["test" if hundred else "test_batch"]):
        labels = [(i + j) % classes for i in range(per_batch)]
        data = _array(labels, 32).transpose(0, 3, 1, 2).reshape(len(labels), -1)  # rows of R, G, B planes
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, key: labels, "batch_label": name}, f, protocol=2)
    meta = {"fine_label_names": [f"c{i}" for i in range(classes)]} if hundred else \
        {"label_names": [f"c{i}" for i in range(classes)]}
    with open(folder / ("meta" if hundred else "batches.meta"), "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return {"train": per_batch * len(names), "test": per_batch, "classes": classes}


def stl10(root: Path, n_train: int = 20, n_test: int = 10, classes: int = 3) -> dict:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for part, n in (("train", n_train), ("test", n_test)):
        labels = [i % classes for i in range(n)]
        _array(labels, 96).transpose(0, 3, 2, 1).tofile(folder / f"{part}_X.bin")  # column-major, as STL-10
        np.asarray([y + 1 for y in labels], dtype=np.uint8).tofile(folder / f"{part}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(classes)) + "\n")
    return {"train": n_train, "test": n_test, "classes": classes}


def flowers102(root: Path, classes: int = 3, per_class: int = 6) -> dict:
    from scipy.io import savemat

    folder = root / "flowers-102"
    n = classes * per_class
    labels = [i % classes + 1 for i in range(n)]
    for i, y in enumerate(labels, 1):
        _img(folder / "jpg" / f"image_{i:05d}.jpg", y, i)
    ids = np.arange(1, n + 1)
    savemat(folder / "imagelabels.mat", {"labels": np.asarray(labels)[None]})
    savemat(folder / "setid.mat", {"trnid": ids[: n // 3][None], "valid": ids[n // 3: 2 * n // 3][None],
                                   "tstid": ids[2 * n // 3:][None]})
    return {"train": n // 3, "val": n // 3, "test": n - 2 * (n // 3), "classes": classes}


def _listed(folder: Path, parts: dict, classes: list[str], fmt, write) -> dict:
    counts = {}
    for part, n in parts.items():
        lines = []
        for i in range(n):
            y = i % len(classes)
            rel = fmt(classes[y], part, i)
            _img(folder / rel, y, zlib.crc32(f"{part}/{i}".encode()) % 997)  # str hash() is salted per process
            lines.append((rel, y))
        write(part, lines)
        counts[part] = n
    return counts


def dtd(root: Path) -> dict:
    data = root / "dtd" / "dtd"  # torchvision's layout: ROOT/dtd/dtd/{images,labels}
    classes = ["banded", "dotted", "striped"]
    (data / "labels").mkdir(parents=True)

    def write(part, lines):
        (data / "labels" / f"{part}1.txt").write_text("".join(f"{r.split('/', 1)[1]}\n" for r, _ in lines))
    counts = _listed(data, {"train": 6, "val": 6, "test": 6}, classes, lambda c, p, i: f"images/{c}/{c}_{p}{i}.jpg",
                     write)
    return {**counts, "classes": 3}


def food101(root: Path) -> dict:
    folder = root / "food-101"
    classes = ["apple_pie", "baklava", "churros"]
    (folder / "meta").mkdir(parents=True)
    (folder / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")

    def write(part, lines):
        by_class = {c: [r[len("images/"):-4] for r, y in lines if classes[y] == c] for c in classes}
        (folder / "meta" / f"{part}.json").write_text(json.dumps(by_class))
    counts = _listed(folder, {"train": 20, "test": 6}, classes, lambda c, p, i: f"images/{c}/{p}{i}.jpg", write)
    return {**counts, "classes": 3}


def pets(root: Path) -> dict:
    folder = root / "oxford-iiit-pet"
    classes = ["Abyssinian", "beagle", "Bengal"]
    (folder / "annotations").mkdir(parents=True)

    def write(part, lines):
        (folder / "annotations" / f"{part}.txt").write_text(
            "".join(f"{Path(r).stem} {y + 1} {1 + (y % 2)} 1\n" for r, y in lines))
    counts = _listed(folder, {"trainval": 15, "test": 6}, classes, lambda c, p, i: f"images/{c}_{p}{i}.jpg", write)
    return {**counts, "classes": 3}


def caltech101(root: Path, classes: int = 2, per_class: int = 33) -> dict:
    folder = root / "caltech101" / "101_ObjectCategories"
    names = ["accordion", "airplanes"][:classes]
    for y, c in enumerate(names + ["BACKGROUND_Google"]):
        for i in range(1, per_class + 1):
            _img(folder / c / f"image_{i:04d}.jpg", y, i)
    return {"all": classes * per_class, "classes": classes}


def sun397(root: Path) -> dict:
    folder = root / "SUN397"
    classes = ["/a/abbey", "/b/bakery/shop"]
    folder.mkdir(parents=True)
    (folder / "ClassName.txt").write_text("\n".join(classes) + "\n")
    counts = {}
    for part, per_class in (("Training", 52), ("Testing", 3)):
        lines = []
        for y, c in enumerate(classes):
            for i in range(per_class):
                rel = f"{c}/sun_{part}{i:03d}.jpg"
                _img(folder / rel.lstrip("/"), y, i)
                lines.append(rel)
        (root / f"{part}_01.txt").write_text("\n".join(lines) + "\n")
        counts[part] = len(lines)
    return {**counts, "classes": 2}


def cars(root: Path) -> dict:
    from scipy.io import savemat

    folder = root / "stanford_cars"
    classes = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"]
    (folder / "devkit").mkdir(parents=True)
    savemat(folder / "devkit" / "cars_meta.mat", {"class_names": np.array(classes, dtype=object)[None]})
    counts = {}
    for part, n, mat in (("train", 20, folder / "devkit" / "cars_train_annos.mat"),
                         ("test", 6, folder / "cars_test_annos_withlabels.mat")):
        records = np.zeros(n, dtype=[("fname", object), ("class", object)])
        for i in range(n):
            _img(folder / f"cars_{part}" / f"{i:05d}.jpg", i % 3, i)
            records[i] = (f"{i:05d}.jpg", np.uint8(i % 3 + 1))
        savemat(mat, {"annotations": records[None]})
        counts[part] = n
    return {**counts, "classes": 3}


def aircraft(root: Path) -> dict:
    data = root / "fgvc-aircraft-2013b" / "data"
    classes = ["707-320", "A300B4", "Cessna 172"]
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(classes) + "\n")
    counts = {}
    for part, n, prefix in (("train", 6, 11), ("val", 6, 22), ("test", 6, 33)):  # distinct ids across the parts
        lines = []
        for i in range(n):
            image_id = f"{prefix}{i:05d}"
            _img(data / "images" / f"{image_id}.jpg", i % 3, i)
            lines.append(f"{image_id} {classes[i % 3]}")
        (data / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
        counts[part] = n
    return {**counts, "classes": 3}


def cub200(root: Path, classes: int = 5, per_class: int = 12) -> dict:
    folder = root / "CUB_200_2011"
    names = [f"{i + 1:03d}.Bird_{i}" for i in range(classes)]
    images, split, labels = [], [], []
    k = 0
    for y, c in enumerate(names):
        for i in range(per_class):
            k += 1
            rel = f"{c}/{c.split('.')[1]}_{i:04d}.jpg"
            _img(folder / "images" / rel, y, i)
            images.append(f"{k} {rel}")
            split.append(f"{k} {int(i < per_class - 2)}")  # the last two of a class are test images
            labels.append(f"{k} {y + 1}")
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "classes.txt").write_text("\n".join(f"{y + 1} {c}" for y, c in enumerate(names)) + "\n")
    return {"train": classes * (per_class - 2), "test": classes * 2, "classes": classes}


def _imagefolder(root: Path, parts: dict) -> dict:
    for part, (classes, per_class) in parts.items():
        for c in classes:
            for i in range(per_class):
                _img(root / part / c / f"{i}.png", sum(map(ord, c)) % 7, i)
    return {part: len(c) * n for part, (c, n) in parts.items()}


def mit67(root: Path) -> dict:
    classes = ["airport_inside", "bakery", "bar"]
    counts = {}
    for part, n in (("Train", 5), ("Test", 2)):
        rel = [f"{c}/{part}{i}.jpg" for c in classes for i in range(n)]
        for r in rel:
            _img(root / "Images" / r, classes.index(r.split("/")[0]), zlib.crc32(r.encode()) % 97)
        (root / f"{part}Images.txt").write_text("\n".join(rel) + "\n")
        counts[part.lower()] = len(rel)
    return {**counts, "classes": 3}


def fc100(root: Path) -> dict:
    return {**_imagefolder(root, {"train": (["apple", "bee"], 3), "test": ([f"t{i}" for i in range(6)], 7)}),
            "classes": 6}


def plant_disease(root: Path) -> dict:
    classes = [f"leaf_{i}" for i in range(5)]
    return {**_imagefolder(root, {"train": (classes, 4), "test": (classes, 3)}), "classes": 5}


BUILDERS = {"cifar10": cifar, "cifar100": lambda r: cifar(r, hundred=True, per_batch=30), "stl10": stl10, "flowers102": flowers102,
            "dtd": dtd, "food101": food101, "pets": pets, "caltech101": caltech101, "sun397": sun397, "cars": cars,
            "aircraft": aircraft, "cub200": cub200, "mit67": mit67, "fc100": fc100, "plant_disease": plant_disease}


def build_all(root: Path) -> dict:
    """Every stand-in under ``root/<name>``; returns name -> counts."""
    return {name: build(root / name) for name, build in BUILDERS.items()}
