"""Readers of the three VISSL transfer benchmarks in the layouts their official downloads unpack to.

On the floor (``transfer/``): the frozen-feature probes (VOC07 SVM; ``transfer.probes.vissl_readers``
wraps these listings for them) and the classification engine (Places205/iNat18 linear,
``transfer.classification.data``) read the same files the same way.

* **VOC07** (``VOCtrainval_06-Nov-2007.tar`` + ``VOCtest_06-Nov-2007.tar``): ``VOCdevkit/VOC2007/``
  with ``JPEGImages/``, ``Annotations/`` and ``ImageSets/Main/{trainval,test}.txt`` plus the 20
  per-class lists ``<cls>_{trainval,test}.txt`` ("<id> 1|-1|0": present, absent, difficult). Read as
  VISSL's ``extra_scripts/datasets/create_voc_data_files.py`` (l. 70-104) reads them: class
  files in sorted order, images in sorted id order, targets 1 present, 0 absent, -1 difficult.
* **Places205** (MIT's ``imagesPlaces205_resize.tar.gz`` + ``trainvalsplit_places205.tar.gz``):
  ``data/vision/torralba/deeplearning/images256/<l>/<class>/*.jpg`` and
  ``trainvalsplit_places205/{train,val}_places205.csv`` with ``<l>/<class>/<file> <label>`` lines
  (the layout mmselfsup's Places205 benchmark configs read; ``images256/`` directly under the root
  is accepted too).
* **iNaturalist 2018** (``train_val2018.tar.gz``, ``train2018.json.tar.gz``, ``val2018.json.tar.gz``):
  ``train_val2018/<supercategory>/<category id>/<hash>.jpg`` and the COCO-style ``train2018.json`` /
  ``val2018.json`` (``images``, ``annotations``, ``categories``); the label is the annotation's
  ``category_id`` (VISSL's ``create_inaturalist2018_data_files.py`` l. 76-83 takes the same id from
  the path), images in the JSON's order.

A listed image that is not on disk is never dropped: one :class:`LayoutError` says how many are
missing, the first few and the root tried. Existence is checked by listing each image folder once
(not one ``stat`` per file: Places205 lists 2.4 M images).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from dataclasses import dataclass

__all__ = ["VOC_CLASSES", "VISSL_READERS", "Listing", "LayoutError", "voc07", "places205", "inat18", "check_listed"]


class LayoutError(ValueError):
    """A dataset folder that is not in the expected layout (one line naming what is missing)."""


@dataclass
class Listing:
    """One split as listed by its official files: labels, class names, image paths, VOC's multi-label targets."""

    labels: list[int]
    classes: list[str]
    paths: list[Path]
    targets: np.ndarray | None = None  # VOC07: int8 [N, 20], 1 present / 0 absent / -1 difficult

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")  # sorted, as VISSL's sorted(data_files) orders them
SHOWN = 3  # missing files named in a one-line error


def check_listed(paths: list[Path], name: str, root: Path, listing: Path | str) -> None:
    """Every listed image exists, or one LayoutError: how many are missing, the first few, the root."""
    by_folder: dict[Path, list[Path]] = defaultdict(list)
    for p in paths:
        by_folder[p.parent].append(p)
    missing: list[Path] = []
    for folder, files in by_folder.items():
        try:
            present = set(os.listdir(folder))
        except OSError:
            present = set()
        missing += [p for p in files if p.name not in present]
    if missing:
        first = ", ".join(str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in missing[:SHOWN])
        raise LayoutError(f"dataset {name} at {root}: {len(missing)} of {len(paths)} images listed in {listing} are "
                          f"missing (first: {first}); a partial download? (docs/PROTOCOLS.md)")


def _first_dir(candidates: list[Path], marker: str, name: str, expected: str) -> Path:
    for c in candidates:
        if (c / marker).exists():
            return c
    raise LayoutError(f"dataset {name}: {marker} not found under {candidates[0]} (tried "
                      f"{', '.join(str(c) for c in candidates)}; expected {expected})")


def voc_root(root: Path) -> Path:
    """``VOCdevkit/VOC2007`` under ``root``, or ``root`` itself when it is that folder (or ``VOCdevkit``)."""
    return _first_dir([root / "VOCdevkit" / "VOC2007", root / "VOC2007", root], "ImageSets/Main", "voc07",
                      "ROOT/VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets/Main}")


def voc07(root: Path, part: str) -> Listing:
    """VOC2007 ``trainval`` or ``test``: paths, VISSL targets [N, 20] (1 / 0 / -1 difficult), sorted ids."""
    if part not in ("trainval", "test", "train", "val"):
        raise LayoutError(f"dataset voc07: part {part!r} is not one of trainval, test, train, val")
    folder = voc_root(Path(root))
    main = folder / "ImageSets" / "Main"
    lists = [main / f"{c}_{part}.txt" for c in VOC_CLASSES]
    absent = [p.name for p in lists if not p.is_file()]
    if absent:
        raise LayoutError(f"dataset voc07 at {folder}: {len(absent)} of 20 per-class lists of {part} are missing "
                          f"(first: {', '.join(absent[:SHOWN])}) in {main}; unpack VOC{'test' if part == 'test' else 'trainval'}"
                          "_06-Nov-2007.tar into the same VOCdevkit")
    table: dict[str, np.ndarray] = {}
    for k, path in enumerate(lists):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or fields[1] not in ("1", "-1", "0"):
                raise LayoutError(f"{path}:{n}: expected '<image id> 1|-1|0', got {line.strip()[:60]!r}")
            row = table.setdefault(fields[0], np.full(len(VOC_CLASSES), -1, dtype=np.int8))
            row[k] = {"1": 1, "-1": 0, "0": -1}[fields[1]]  # VOC's absent/difficult -> VISSL's 0/-1 (l. 89-95)
    ids = sorted(table)
    listing = main / f"{part}.txt"
    if listing.is_file():  # the image list and the class lists must agree, or some labels are wrong
        listed = {x.strip() for x in listing.read_text().split()}
        if listed != set(ids):
            odd = sorted(listed ^ set(ids))
            raise LayoutError(f"dataset voc07 at {folder}: {listing.name} and the per-class {part} lists differ in "
                              f"{len(odd)} image ids (first: {', '.join(odd[:SHOWN])})")
    if not ids:
        raise LayoutError(f"dataset voc07 at {folder}: the {part} lists name no images")
    paths = [folder / "JPEGImages" / f"{i}.jpg" for i in ids]
    check_listed(paths, "voc07", folder, f"ImageSets/Main/*_{part}.txt")
    targets = np.stack([table[i] for i in ids])
    # a single label (the probes' feature cache stores one): the first present class; the SVM reads ``targets``
    labels = [int(np.argmax(t == 1)) for t in targets]
    return Listing(labels, list(VOC_CLASSES), paths, targets)


PLACES_IMAGES = ("data/vision/torralba/deeplearning/images256", "images256", "images")


def places205(root: Path, part: str) -> Listing:
    """Places205 ``train`` or ``val`` from the official CSV split, in file order."""
    if part not in ("train", "val"):
        raise LayoutError(f"dataset places205: part {part!r} is not one of train, val (the official split)")
    root = Path(root)
    base = _first_dir([root, root / "places205", root / "Places205"], "trainvalsplit_places205", "places205",
                      "ROOT/trainvalsplit_places205/{train,val}_places205.csv and "
                      "ROOT/data/vision/torralba/deeplearning/images256/")
    csv = base / "trainvalsplit_places205" / f"{part}_places205.csv"
    if not csv.is_file():
        raise LayoutError(f"dataset places205 at {base}: {csv.name} not found in {csv.parent} "
                          "(unpack trainvalsplit_places205.tar.gz)")
    images = next((base / d for d in PLACES_IMAGES if (base / d).is_dir()), None)
    if images is None:
        raise LayoutError(f"dataset places205 at {base}: no image folder (tried {', '.join(PLACES_IMAGES)}; "
                          "unpack imagesPlaces205_resize.tar.gz there)")
    rel, labels = [], []
    for n, line in enumerate(csv.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise LayoutError(f"{csv}:{n}: expected '<l>/<class>/<file>.jpg <label>', got {line.strip()[:60]!r}")
        rel.append(fields[0].lstrip("/"))
        labels.append(int(fields[1]))
    classes = _class_names(rel, labels, csv)
    paths = [images / r for r in rel]
    check_listed(paths, "places205", images, csv.name)
    return Listing(labels, classes, paths)


def _class_names(rel: list[str], labels: list[int], source: Path) -> list[str]:
    """Label -> its folder (``a/abbey``, ``f/field/cultivated``); one folder per label, labels 0..C-1."""
    names: dict[int, str] = {}
    for r, y in zip(rel, labels):
        folder = r.rsplit("/", 1)[0]
        if names.setdefault(y, folder) != folder:
            raise LayoutError(f"{source}: label {y} is given to images of {names[y]} and of {folder}")
    if not names:
        raise LayoutError(f"{source}: no images listed")
    if sorted(names) != list(range(len(names))):
        raise LayoutError(f"{source}: labels are not 0..{len(names) - 1} ({len(names)} classes, max {max(names)})")
    return [names[y].split("/", 1)[-1] for y in range(len(names))]


def inat18(root: Path, part: str) -> Listing:
    """iNat18 ``train`` or ``val`` from ``{part}2018.json``: paths in the JSON's order, label = category_id."""
    if part not in ("train", "val"):
        raise LayoutError(f"dataset inat18: part {part!r} is not one of train, val (the official split)")
    root = Path(root)
    base = _first_dir([root, root / "inat18", root / "inaturalist2018"], f"{part}2018.json", "inat18",
                      "ROOT/{train,val}2018.json and ROOT/train_val2018/<supercategory>/<id>/*.jpg")
    source = base / f"{part}2018.json"
    try:
        data = json.loads(source.read_text())
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        label_of = {a["image_id"]: int(a["category_id"]) for a in data["annotations"]}
        images = [(im["id"], str(im["file_name"])) for im in data["images"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LayoutError(f"{source}: not an iNat18 annotation file with images, annotations and categories "
                          f"({type(e).__name__}: {str(e)[:80]})") from None
    unlabeled = [f for i, f in images if i not in label_of]
    if unlabeled:
        raise LayoutError(f"{source}: {len(unlabeled)} of {len(images)} images have no annotation (first: "
                          f"{', '.join(unlabeled[:SHOWN])})")
    ids = sorted(categories)
    index = {c: k for k, c in enumerate(ids)}  # iNat18's ids are 0..8141: the index is the id itself
    unknown = sorted({label_of[i] for i, _ in images} - set(index))
    if unknown:
        raise LayoutError(f"{source}: annotations use {len(unknown)} category ids not in 'categories' "
                          f"(first: {unknown[:SHOWN]})")
    paths = [base / f for _, f in images]
    check_listed(paths, "inat18", base, source.name)
    return Listing([index[label_of[i]] for i, _ in images], [categories[c] for c in ids], paths)


VISSL_READERS = {"voc07": voc07, "places205": places205, "inat18": inat18}
