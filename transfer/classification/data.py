"""The config's ImageNet from what is on disk: annotation files in ImageFolder order, class names, sizes.

mmpretrain's ``CustomDataset`` reads an annotation file (``relative/path label`` per line) under
``data_root``. :func:`prepare_data` writes the train and val files into the run folder from
:mod:`transfer.imagenet` (either layout, the subset list when the config names one,
every listed file checked) and points both datasets at them, so mmpretrain trains on exactly the
files and labels VICReg's ``evaluate.py`` would, and nothing is found (or missed) later.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from transfer.imagenet import FULL, imagenet_samples, read_subset_file, write_ann_file
from transfer.records import TaskSkipped
from transfer.vissl_datasets import VISSL_READERS

LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


def set_data_root(cfg: Any, root: str | Path) -> None:
    """Point every dataset of the config at ``root`` (the ``--data-root`` option)."""
    cfg.data_root = str(root)
    for loader in LOADERS:
        if cfg.get(loader) is not None:
            cfg[loader].dataset.data_root = str(root)


def prepare_data(cfg: Any, out: Path, smoke: bool) -> dict[str, Any]:
    """Write ``out/ann/{train,val}.txt`` for the config's ImageNet and point the loaders at them.

    The full dataset's sizes are checked unless ``cfg.check_sizes`` is False or ``smoke`` (stand-ins);
    the head gets as many outputs as there are classes (1000 on ImageNet). Returns what the record keeps.
    """
    if cfg.get("dataset_name") in VISSL_READERS:
        return prepare_vissl_data(cfg, out, smoke)
    expect = FULL if cfg.get("check_sizes", True) and not smoke else None
    subset_file = _subset_file(cfg)
    names = read_subset_file(subset_file) if subset_file else None
    layout, classes, train, val = imagenet_samples(cfg.data_root, cfg.get("subset"), expect, complete=not smoke,
                                                   names=names)
    if smoke:  # a pipeline check of a few iterations, on any ImageNet
        train, val = _smoke_subset(train, val, cfg)
    if len(classes) < 5:  # top-5 accuracy needs five classes
        raise ValueError(f"{layout.train}: {len(classes)} classes; top-5 accuracy needs at least 5")
    notes = _point_loaders(cfg, out, layout.base, classes, train, val)
    return {"root": str(layout.root), "layout": layout.kind, "classes": len(classes), "train_images": len(train),
            "val_images": len(val), "subset": cfg.get("subset"), "sizes_checked": expect is not None, "notes": notes,
            **({"subset_file": str(subset_file), "subset_file_sha256": hashlib.sha256(subset_file.read_bytes())
                .hexdigest()} if subset_file else {})}


def _subset_file(cfg: Any) -> Path | None:
    """The config's ``subset_file`` (``--subset-file``; a relative path in a config is under the data root)."""
    name = cfg.get("subset_file")
    if not name:
        return None
    path = Path(name)
    return path if path.is_absolute() or cfg.get("subset_file_from_cli") else Path(cfg.data_root) / path


def _smoke_subset(train: list, val: list, cfg: Any) -> tuple[list, list]:
    """A few images spread over the classes: a pipeline check of a few iterations."""
    n = int(cfg.get("smoke_images", 4))
    return train[:: max(1, len(train) // n)][:n], val[:: max(1, len(val) // 8)][:8]


def _point_loaders(cfg: Any, out: Path, base: Path, classes: list, train: list, val: list) -> list[str]:
    """Write ``out/ann/{train,val}.txt``, point the loaders at them, size the head; returns the notes."""
    ann = out / "ann"
    write_ann_file(ann / "train.txt", train)
    write_ann_file(ann / "val.txt", val)
    for loader, split in (("train_dataloader", "train"), ("val_dataloader", "val"), ("test_dataloader", "val")):
        if cfg.get(loader) is not None:
            cfg[loader].dataset.update(data_root=str(base), ann_file=str((ann / f"{split}.txt").resolve()),
                                       data_prefix="", metainfo=dict(classes=list(classes)))
    notes = []
    if len(classes) != int(cfg.model.head.num_classes):
        notes.append(f"model.head.num_classes {cfg.model.head.num_classes} -> {len(classes)} (the classes on disk)")
    cfg.model.head.num_classes = len(classes)
    cfg.model.data_preprocessor.num_classes = len(classes)
    return notes


def prepare_vissl_data(cfg: Any, out: Path, smoke: bool) -> dict[str, Any]:
    """Places205 / iNat18 from their official split files (``transfer.vissl_datasets``), every listed image checked.

    The class count is the config's (205, 8142) unless ``smoke`` or ``cfg.check_sizes`` is False (stand-ins).
    """
    name, root = str(cfg.dataset_name), Path(cfg.data_root)
    if not root.exists():
        raise TaskSkipped(f"dataset {name} not found: {root} does not exist (expected {cfg.data_hint})")
    reader = VISSL_READERS[name]
    train_list, val_list = reader(root, "train"), reader(root, "val")
    if train_list.classes != val_list.classes:
        raise ValueError(f"dataset {name} at {root}: the train and val files name different classes "
                         f"({len(train_list.classes)} and {len(val_list.classes)})")
    classes = train_list.classes
    if cfg.get("check_sizes", True) and not smoke and len(classes) != int(cfg.num_classes):
        raise ValueError(f"dataset {name} at {root}: {len(classes)} classes, the official split has "
                         f"{cfg.num_classes}; a partial download? (--smoke or check_sizes=False for a stand-in)")
    if len(classes) < 5:  # top-5 accuracy needs five classes
        raise ValueError(f"dataset {name} at {root}: {len(classes)} classes; top-5 accuracy needs at least 5")
    base = Path(os.path.commonpath([str(p.parent) for p in train_list.paths + val_list.paths]))
    train = [(str(p.relative_to(base)), y) for p, y in zip(train_list.paths, train_list.labels)]
    val = [(str(p.relative_to(base)), y) for p, y in zip(val_list.paths, val_list.labels)]
    if smoke:
        train, val = _smoke_subset(train, val, cfg)
    notes = _point_loaders(cfg, out, base, classes, train, val)
    return {"root": str(root), "layout": f"{name} official", "classes": len(classes), "train_images": len(train),
            "val_images": len(val), "subset": None, "sizes_checked": not smoke and cfg.get("check_sizes", True),
            "notes": notes}
