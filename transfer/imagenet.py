"""ImageNet-1k on disk as users have it, mapped to class indices in ``torchvision.datasets.ImageFolder`` order.

Two layouts are read (``find_layout``), both resolving to the same (file, class index) lists:

- **folders**: ``ROOT/train/<synset>/*.JPEG`` and ``ROOT/val/<synset>/*.JPEG`` (what VICReg's
  ``evaluate.py`` and every ``ImageFolder`` script expect);
- **ILSVRC/Kaggle**: ``ROOT/ILSVRC/Data/CLS-LOC/{train,val}`` with a flat ``val/`` (50,000 files) labelled
  by ``ROOT/LOC_val_solution.csv`` (``ImageId,PredictionString``; the synset is the first word of
  ``PredictionString``); a val folder already sorted into synset folders is read as such.

Class indices are ImageFolder's: the sorted names of the train folder's sub-folders (``find_classes``),
so a label here is the label VICReg's script trains with. The 1 % / 10 % lists (SimCLR's, shipped in
``transfer/imagenet_subsets/`` with their sha256) name train files ``<synset>_<n>.JPEG``; a listed file
that is not on disk refuses the run in one line, never a silently smaller training set. Pure Python (no
torch, no engine) and on the floor, so that the frozen-feature probes (kNN) can read ImageNet through it too.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from transfer.records import TaskSkipped

SUBSET_DIR = Path(__file__).resolve().parent / "imagenet_subsets"
# sha256 of SimCLR's imagenet_subsets files (imagenet_subsets/README.md): a changed list is a different protocol
SUBSETS = {
    "1percent": ("1percent.txt", 12_811, "71e82a48ba78252683ae334c4d019ebd5c6e855b9599c1389fbe83eb9549cf17"),
    "10percent": ("10percent.txt", 128_116, "6d09de11e7bdaf5b1f3b1f249b6183695f97310cdd20f0c03e7235b6b9392091"),
}
# ILSVRC-2012 sizes: a run on fewer files is refused (unless the caller passes expect=None: stand-ins, --smoke)
FULL = {"classes": 1000, "train": 1_281_167, "val": 50_000}
KAGGLE = Path("ILSVRC/Data/CLS-LOC")
VAL_CSV = "LOC_val_solution.csv"
# torchvision.datasets.folder.IMG_EXTENSIONS (ImageFolder's test, lower-cased)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SHOWN = 3  # file names a one-line error quotes

Samples = list[tuple[str, int]]  # (path relative to the layout's root, class index)


class ImageNetLayoutError(ValueError):
    """The folder exists but is not (a complete) ImageNet in a known layout: one line."""


@dataclass(frozen=True)
class ImageNetLayout:
    root: Path  # what the user passed
    base: Path  # the folder holding train/ and val/
    kind: str  # "folders" or "kaggle"
    val_csv: Path | None  # the Kaggle labels of a flat val/

    @property
    def train(self) -> Path:
        return self.base / "train"

    @property
    def val(self) -> Path:
        return self.base / "val"


def find_layout(root: str | Path) -> ImageNetLayout:
    """The layout under ``root`` (TaskSkipped when ``root`` does not exist, one-line error when unknown)."""
    root = Path(root)
    if not root.is_dir():
        raise TaskSkipped(f"dataset imagenet not found: {root} does not exist (expected train/<synset>/ and "
                          f"val/, or {KAGGLE}/{{train,val}} with {VAL_CSV}; pass --data-root)")
    for base, kind in ((root, "folders"), (root / KAGGLE, "kaggle")):
        if (base / "train").is_dir() and (base / "val").is_dir():
            csv_path = next((p for p in (root / VAL_CSV, base / VAL_CSV) if p.is_file()), None)
            return ImageNetLayout(root, base, kind, csv_path)
    raise ImageNetLayoutError(f"{root}: not an ImageNet layout (expected train/<synset>/ + val/, or {KAGGLE}/"
                              f"{{train,val}} + {VAL_CSV}); found {sorted(p.name for p in root.iterdir())[:5]}")


def find_classes(train: Path) -> list[str]:
    """ImageFolder's classes: the sorted sub-folder names of ``train`` (torchvision ``find_classes``)."""
    return sorted(entry.name for entry in os.scandir(train) if entry.is_dir())


def _images(folder: Path) -> list[str]:
    """Image files under ``folder``, sorted by path like ImageFolder's ``make_dataset`` walk."""
    out = []
    for dirpath, _, files in sorted(os.walk(folder, followlinks=True)):
        out += [os.path.join(dirpath, f) for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
    return out


def folder_samples(split: Path, classes: list[str], base: Path) -> Samples:
    """(path relative to ``base``, index) for every image of ``split/<synset>/``, ImageFolder order."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(e.name for e in os.scandir(split) if e.is_dir() and e.name not in index)
    if unknown:
        raise ImageNetLayoutError(f"{split}: {len(unknown)} class folders not in train/ ({unknown[:SHOWN]}); "
                                  "train/ and val/ must hold the same synsets")
    samples = []
    for name in sorted(e.name for e in os.scandir(split) if e.is_dir()):
        samples += [(os.path.relpath(p, base), index[name]) for p in _images(split / name)]
    return samples


def read_subset(name: str) -> list[str]:
    """The shipped subset list ``name`` (``1percent``/``10percent``), checked against its sha256 and size."""
    if name not in SUBSETS:
        raise ValueError(f"subset {name!r}: expected one of {sorted(SUBSETS)}")
    file, lines, digest = SUBSETS[name]
    data = (SUBSET_DIR / file).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise ImageNetLayoutError(f"{SUBSET_DIR / file}: sha256 {hashlib.sha256(data).hexdigest()[:12]}... is not "
                                  f"SimCLR's {digest[:12]}... (a changed list is another protocol; reinstall)")
    names = data.decode().split()
    if len(names) != lines:
        raise ImageNetLayoutError(f"{SUBSET_DIR / file}: {len(names)} names, expected {lines}")
    return names


def read_subset_file(path: str | Path) -> list[str]:
    """A subset list the user passes (``--subset-file``, the demo's synthetic twin): SimCLR's format, one
    ``<synset>_<n>.<ext>`` per line. Not sha256-checked: the paper protocols read only the shipped lists."""
    path = Path(path)
    try:
        names = path.read_text().split()
    except (OSError, UnicodeDecodeError) as e:
        raise ImageNetLayoutError(f"--subset-file {path}: unreadable ({type(e).__name__}); expected a text file "
                                  "of <synset>_<n>.JPEG names, one a line") from None
    bad = [n for n in names if "_" not in n or not n.lower().endswith(IMG_EXTENSIONS)]
    if not names or bad:
        raise ImageNetLayoutError(f"--subset-file {path}: {len(bad)} of {len(names)} lines are not <synset>_<n>.JPEG "
                                  f"names ({bad[:SHOWN]}); expected SimCLR's format, one file name a line")
    return names


def subset_samples(layout: ImageNetLayout, names: list[str], classes: list[str], complete: bool = True) -> Samples:
    """(train file, index) for each listed ``<synset>_<n>.JPEG``, as VICReg's ``evaluate.py`` builds them
    (``traindir / cls / fname``, ``class_to_idx[cls]``); every listed file must be on disk (``complete``;
    a ``--smoke`` pipeline check on a stand-in takes the listed files it finds, at least one)."""
    index = {c: i for i, c in enumerate(classes)}
    samples, missing = [], []
    for fname in names:
        synset = fname.split("_")[0]
        rel = os.path.join("train", synset, fname)
        if synset not in index or not (layout.base / rel).is_file():
            missing.append(fname)
        else:
            samples.append((rel, index[synset]))
    if missing and (complete or not samples):
        raise ImageNetLayoutError(f"{len(missing)} of {len(names)} listed training files missing under "
                                  f"{layout.train} (e.g. {', '.join(missing[:SHOWN])}); a partial ImageNet would "
                                  "train on a smaller subset than the protocol's")
    return samples


def flat_val_samples(layout: ImageNetLayout, classes: list[str]) -> Samples:
    """A flat Kaggle ``val/`` labelled by ``LOC_val_solution.csv`` (sorted by file name)."""
    if layout.val_csv is None:
        raise ImageNetLayoutError(f"{layout.val}: flat validation folder without {VAL_CSV} (looked in "
                                  f"{layout.root} and {layout.base}); it labels the validation images")
    index = {c: i for i, c in enumerate(classes)}
    on_disk = {f for f in os.listdir(layout.val) if f.lower().endswith(IMG_EXTENSIONS)}
    samples, absent, unknown = [], [], []
    with open(layout.val_csv, newline="") as f:
        for row in csv.DictReader(f):
            fname, synset = row["ImageId"] + ".JPEG", row["PredictionString"].split()[0]
            if fname not in on_disk:
                absent.append(fname)
            elif synset not in index:
                unknown.append(synset)
            else:
                samples.append((os.path.join("val", fname), index[synset]))
    if absent or unknown:
        raise ImageNetLayoutError(f"{layout.val_csv}: {len(absent)} listed images missing in {layout.val} "
                                  f"({absent[:SHOWN]}), {len(unknown)} with synsets not in train/ ({unknown[:SHOWN]})")
    unlabelled = sorted(on_disk - {os.path.basename(p) for p, _ in samples})
    if unlabelled:
        raise ImageNetLayoutError(f"{layout.val}: {len(unlabelled)} images have no row in {layout.val_csv} "
                                  f"({unlabelled[:SHOWN]})")
    return sorted(samples)


def split_samples(root: str | Path, split: str) -> tuple[ImageNetLayout, list[str], Samples]:
    """(layout, classes, samples) of one split (``train`` or ``val``), listing only that split's folder.

    The frozen-feature probes read ImageNet through this (the kNN bank is ``train``, the queries ``val``).
    """
    layout = find_layout(root)
    classes = find_classes(layout.train)
    if not classes:
        raise ImageNetLayoutError(f"{layout.train}: no class folders (expected train/<synset>/*.JPEG)")
    if split == "train":
        return layout, classes, folder_samples(layout.train, classes, layout.base)
    has_folders = any(e.is_dir() for e in os.scandir(layout.val))
    val = folder_samples(layout.val, classes, layout.base) if has_folders else flat_val_samples(layout, classes)
    return layout, classes, val


def imagenet_samples(root: str | Path, subset: str | None = None,
                     expect: dict[str, int] | None = FULL,
                     complete: bool = True, names: list[str] | None = None,
                     ) -> tuple[ImageNetLayout, list[str], Samples, Samples]:
    """(layout, classes, train samples, val samples) of the ImageNet under ``root``.

    ``subset`` (``1percent``/``10percent``) restricts training to the shipped list. ``expect`` holds the
    full dataset's sizes (classes, train, val); fewer is refused in one line (``None``: no size check).
    ``complete=False`` (``--smoke`` only) takes the listed files that are on disk. ``names``: a list read by
    :func:`read_subset_file` instead of a shipped one.
    """
    layout, classes, val = split_samples(root, "val")
    if names is not None or subset:
        train = subset_samples(layout, names if names is not None else read_subset(subset), classes, complete)
        subset = subset or "file"
    else:
        train = folder_samples(layout.train, classes, layout.base)
    found = {"classes": len(classes), "train": len(train), "val": len(val)}
    short = {k: (found[k], n) for k, n in (expect or {}).items() if (subset is None or k != "train") and found[k] < n}
    if short or not train or not val:
        what = ", ".join(f"{k} {have:,} of {n:,}" for k, (have, n) in short.items()) or \
            f"train {len(train)} images, val {len(val)}"
        raise ImageNetLayoutError(f"{layout.base}: incomplete ImageNet ({what}); the protocol needs all of it")
    return layout, classes, train, val


def write_ann_file(path: Path, samples: Samples) -> None:
    """mmpretrain's ``CustomDataset`` annotation file (``relative/path label`` per line), atomically."""
    from plumbing.atomic import write_text_atomic

    write_text_atomic(path, "".join(f"{rel} {label}\n" for rel, label in samples))


PROTOCOL_SUBSETS = {"linear": None, "semisup_1pct": "1percent", "semisup_10pct": "10percent"}
LAYOUT_HINT = "train/<synset>/ + val/<synset>/, or ILSVRC/Data/CLS-LOC/{train,val} + LOC_val_solution.csv"


def describe(root: str | Path, protocol: str = "linear", full: bool = True) -> str:
    """One line on the ImageNet under ``root`` as ``protocol`` reads it (run_all ``--check``); raises
    :class:`ImageNetLayoutError` (or TaskSkipped) as the task would. ``full=False``: a ``--smoke`` check."""
    layout, classes, train, val = imagenet_samples(root, PROTOCOL_SUBSETS[protocol], FULL if full else None, full)
    subset = PROTOCOL_SUBSETS[protocol]
    return (f"{layout.kind} layout, {len(classes)} classes; train {len(train)}"
            + (f" ({subset} list)" if subset else "") + f", val {len(val)}")
