"""The synthetic twin of ImageNet's layout: ``ROOT/imagenet_like/``, derived from the synthetic ``color`` task.

The demo suite runs the ImageNet classification engine (``transfer.classification``) on it at CPU size::

    imagenet_like/train/<synset>/<synset>_<n>.JPEG   the color task's train images (ImageFolder layout)
    imagenet_like/val/<synset>/<synset>_<n>.JPEG     its val images
    imagenet_like/1percent.txt                       the twin's "1 %" list, SimCLR's file format
    imagenet_like/classes.json                       synset -> color name
    imagenet_like/COMPLETE                           written last

Why ``color`` (8 classes, 80/20 train/val images per class in the demo preset): it is the task on which the
demo's pretrained features are distinguishable from the untrained floor (docs/DEMO.md: linear +57 points),
while ``shape`` stays near chance even for a supervised ResNet-18 at this size, so a twin on it could show
nothing but chance; chosen before the twin was run on any trained checkpoint. Synsets are ``n%08d`` of the
class's position in sorted name order (``classes.json`` maps them back). Images are the PNGs of
``classification/color/{train,val}`` re-encoded as JPEG at a fixed quality (same pixels in, same
bytes out with a given Pillow), so the twin is as deterministic as the generator. The "1 %" list keeps
:data:`FRACTION` of each class's train images (at least one), drawn with ``np.random.default_rng(seed)``:
1 % of the demo's 80 images per class would be under one image, so the twin keeps 10 % (8 per class;
ImageNet's 1 % list has about 13 per class). It is never one of the shipped SimCLR lists.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from plumbing.atomic import write_text_atomic

FOLDER = "imagenet_like"
SOURCE = "classification/color"
SUBSET_FILE = "1percent.txt"
FRACTION = 0.1  # of each class's train images in the twin's "1 %" list (see the module docstring)
JPEG_QUALITY = 95
VERSION = 1  # bump when the files this writes change


def synset(label: int) -> str:
    return f"n{label:08d}"


def _write_split(src: Path, dst: Path, classes: list[str]) -> dict[str, list[str]]:
    """JPEG copies of ``src/<class>/*.png`` as ``dst/<synset>/<synset>_<n>.JPEG``; {synset: file names}."""
    files: dict[str, list[str]] = {}
    for label, name in enumerate(classes):
        folder = dst / synset(label)
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for n, png in enumerate(sorted((src / name).glob("*.png"))):
            fname = f"{synset(label)}_{n}.JPEG"
            tmp = folder / f".{fname}.tmp"
            with Image.open(png) as im:
                im.convert("RGB").save(tmp, format="JPEG", quality=JPEG_QUALITY, optimize=False)
            os.replace(tmp, folder / fname)
            names.append(fname)
        files[synset(label)] = names
    return files


def subset_list(train: dict[str, list[str]], fraction: float = FRACTION, seed: int = 0) -> list[str]:
    """A fixed ``fraction`` of each class's files (at least one), seeded, sorted as SimCLR's lists are by class."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for syn in sorted(train):
        names = train[syn]
        k = max(1, round(fraction * len(names)))
        out += [names[i] for i in sorted(rng.choice(len(names), size=k, replace=False))]
    return out


def ensure_imagenet_like(root: str | Path, seed: int = 0) -> Path:
    """``ROOT/imagenet_like`` from a COMPLETE synthetic dataset at ``root`` (reused when its marker matches)."""
    root = Path(root)
    out = root / FOLDER
    marker = {"version": VERSION, "source": SOURCE, "fraction": FRACTION, "seed": seed, "quality": JPEG_QUALITY}
    try:
        if json.loads((out / "COMPLETE").read_text()) == marker:
            return out
    except (OSError, ValueError):
        pass
    src = root / SOURCE
    if not (src / "train").is_dir() or not (src / "val").is_dir():
        raise ValueError(f"{src}: expected the synthetic color task's train/ and val/ (python -m mast.data.synthetic)")
    (out / "COMPLETE").unlink(missing_ok=True)
    for split in ("train", "val"):  # an older or unfinished twin (this module's files under the generator's root)
        shutil.rmtree(out / split, ignore_errors=True)
    classes = sorted((p.name for p in (src / "train").iterdir() if p.is_dir()))
    train = _write_split(src / "train", out / "train", classes)
    _write_split(src / "val", out / "val", classes)
    write_text_atomic(out / SUBSET_FILE, "".join(f"{n}\n" for n in subset_list(train, seed=seed)))
    write_text_atomic(out / "classes.json", json.dumps({synset(i): c for i, c in enumerate(classes)}, indent=1))
    write_text_atomic(out / "COMPLETE", json.dumps(marker))
    return out
