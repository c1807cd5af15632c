"""The config's ImageNet from what is on disk: annotation files in ImageFolder order, class names, sizes.

mmpretrain's ``CustomDataset`` reads an annotation file (``relative/path label`` per line) under
``data_root``. :func:`prepare_data` writes the train and val files into the run folder from
:mod:`transfer.imagenet` (either layout, the subset list when the config names one,
every listed file checked) and points both datasets at them, so mmpretrain trains on exactly the
files and labels VICReg's ``evaluate.py`` would, and nothing is found (or missed) later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transfer.imagenet import FULL, imagenet_samples, write_ann_file

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
    expect = FULL if cfg.get("check_sizes", True) and not smoke else None
    layout, classes, train, val = imagenet_samples(cfg.data_root, cfg.get("subset"), expect, complete=not smoke)
    if smoke:  # a few images spread over the classes: a pipeline check of a few iterations, on any ImageNet
        train = train[:: max(1, len(train) // int(cfg.get("smoke_images", 4)))][: int(cfg.get("smoke_images", 4))]
        val = val[:: max(1, len(val) // 8)][:8]
    if len(classes) < 5:  # top-5 accuracy needs five classes
        raise ValueError(f"{layout.train}: {len(classes)} classes; top-5 accuracy needs at least 5")
    ann = out / "ann"
    write_ann_file(ann / "train.txt", train)
    write_ann_file(ann / "val.txt", val)
    for loader, split in (("train_dataloader", "train"), ("val_dataloader", "val"), ("test_dataloader", "val")):
        if cfg.get(loader) is not None:
            cfg[loader].dataset.update(data_root=str(layout.base), ann_file=str((ann / f"{split}.txt").resolve()),
                                       data_prefix="", metainfo=dict(classes=list(classes)))
    notes = []
    if len(classes) != int(cfg.model.head.num_classes):
        notes.append(f"model.head.num_classes {cfg.model.head.num_classes} -> {len(classes)} (the classes on disk)")
    cfg.model.head.num_classes = len(classes)
    cfg.model.data_preprocessor.num_classes = len(classes)
    return {"root": str(layout.root), "layout": layout.kind, "classes": len(classes), "train_images": len(train),
            "val_images": len(val), "subset": cfg.get("subset"), "sizes_checked": expect is not None, "notes": notes}
