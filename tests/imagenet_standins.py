"""Tiny stand-ins of ImageNet in its two download layouts (transfer/imagenet.py reads both).

``folders``: ``train/<synset>/<synset>_<n>.JPEG`` + ``val/<synset>/ILSVRC2012_val_<8 digits>.JPEG``;
``kaggle``: ``ILSVRC/Data/CLS-LOC/{train,val}`` with a flat ``val/`` and ``LOC_val_solution.csv``
(``ImageId,PredictionString``, the synset first), as the Kaggle download has them. ``colour=True`` paints
each class its own colour under the noise, so a probe on random features can tell the classes apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SYNSETS = [f"n0{i:07d}" for i in range(6)]
COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (220, 220, 30), (30, 220, 220), (220, 30, 220)]


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 48), colour: tuple | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    if colour is not None:  # the class colour, with a little noise
        pixels = (np.asarray(colour, dtype=np.float64) + (pixels.astype(np.float64) - 127.5) * 0.15).clip(0, 255)
        pixels = pixels.astype(np.uint8)
    Image.fromarray(pixels).save(path)


def folders_standin(root: Path, n_train: int = 2, colour: bool = False) -> Path:
    """``train/<synset>/*.JPEG`` + ``val/<synset>/``: six classes, ``n_train`` + 1 images each."""
    for c, synset in enumerate(SYNSETS):
        for j in range(n_train):
            write_jpeg(root / "train" / synset / f"{synset}_{j}.JPEG", 10 * c + j, colour=COLOURS[c] if colour else None)
        write_jpeg(root / "val" / synset / f"ILSVRC2012_val_{c:08d}.JPEG", 100 + c, colour=COLOURS[c] if colour else None)
    return root


def kaggle_standin(root: Path, n_train: int = 2, colour: bool = False) -> Path:
    """The Kaggle layout of the same images: ILSVRC/Data/CLS-LOC/{train,val} with a flat val + LOC_val_solution.csv."""
    base = root / "ILSVRC" / "Data" / "CLS-LOC"
    rows = ["ImageId,PredictionString"]
    for c, synset in enumerate(SYNSETS):
        for j in range(n_train):
            write_jpeg(base / "train" / synset / f"{synset}_{j}.JPEG", 10 * c + j, colour=COLOURS[c] if colour else None)
        write_jpeg(base / "val" / f"ILSVRC2012_val_{c:08d}.JPEG", 100 + c, colour=COLOURS[c] if colour else None)
        rows.append(f"ILSVRC2012_val_{c:08d},{synset} 1 2 30 40 {synset} 5 6 7 8")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return root
