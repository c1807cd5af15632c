"""Datasets for the detection task: detectron2's builtin names, and the synthetic scenes.

Builtin COCO / VOC names are registered by detectron2 itself on import, under
``$DETECTRON2_DATASETS`` (default ``./datasets``). Their files are checked *before* any training,
so a missing dataset is one line naming ``DETECTRON2_DATASETS`` and the layout detectron2 expects,
not a ``FileNotFoundError`` from a data-loader worker.

The synthetic scenes (``ROOT/scenes``, written by ``mast.data.synthetic``) are COCO instances with
RLE masks; they are registered as ``synthetic_scenes_train`` / ``synthetic_scenes_val`` with
:func:`detectron2.data.datasets.register_coco_instances`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from transfer.detection.heads import register_heads
from transfer.records import TaskSkipped

__all__ = ["SYNTHETIC_SPLITS", "LAYOUT", "datasets_root", "prepare_datasets", "register_synthetic",
           "synthetic_num_classes", "evaluator_type"]

SYNTHETIC_SPLITS = {"synthetic_scenes_train": "train", "synthetic_scenes_val": "val"}
LAYOUT = {
    "coco": "coco/{train2017,val2017}/*.jpg + coco/annotations/instances_{train,val}2017.json",
    "voc": "VOC2007/{Annotations,ImageSets/Main,JPEGImages} and VOC2012/{Annotations,ImageSets/Main,JPEGImages}",
}


def datasets_root() -> str:
    """Where detectron2 looks for its builtin datasets (read by detectron2 at import)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _synthetic_paths(root: Path, split: str) -> tuple[Path, Path]:
    return root / "scenes" / "annotations" / f"instances_{split}.json", root / "scenes" / "images" / split


def register_synthetic(root: str | Path) -> None:
    """Register the synthetic scenes under ``root`` (idempotent; call in every process)."""
    register_heads()
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    root = Path(root).resolve()
    for name, split in SYNTHETIC_SPLITS.items():
        json_file, images = _synthetic_paths(root, split)
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).json_file == str(json_file):
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, str(json_file), str(images))


def synthetic_num_classes(root: str | Path) -> int:
    json_file, _ = _synthetic_paths(Path(root), "train")
    with open(json_file) as f:
        return len(json.load(f)["categories"])


def _check_synthetic(root: Path) -> None:
    hint = f"generate it with `python -m mast.data.synthetic --out {root} --preset demo` or pass --data-root"
    if not (root / "COMPLETE").is_file():
        raise TaskSkipped(f"synthetic data root {root} is missing or incomplete (no COMPLETE marker); {hint}")
    for split in SYNTHETIC_SPLITS.values():
        json_file, images = _synthetic_paths(root, split)
        if not json_file.is_file() or not images.is_dir():
            raise TaskSkipped(f"synthetic data root {root} lacks {json_file} or {images}; {hint}")


def _builtin_paths(name: str) -> list[str]:
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(name)
    if hasattr(meta, "json_file"):
        return [meta.json_file, meta.image_root]
    if hasattr(meta, "dirname"):
        return [os.path.join(meta.dirname, d) for d in ("Annotations", "JPEGImages", "ImageSets/Main")]
    return []


def _check_builtin(name: str) -> None:
    missing = [p for p in _builtin_paths(name) if not os.path.exists(p)]
    if missing:
        kind = "voc" if name.startswith("voc") else "coco"
        raise TaskSkipped(
            f"dataset {name} not found: {missing[0]} does not exist; set DETECTRON2_DATASETS "
            f"(now {datasets_root()!r}) to a folder holding {LAYOUT[kind]}"
        )


def prepare_datasets(names: Iterable[str], data_root: str | Path | None) -> None:
    """Register and check every dataset in ``names``; :class:`TaskSkipped` if one is not on disk."""
    register_heads()
    from detectron2.data import DatasetCatalog

    for name in names:
        if name in SYNTHETIC_SPLITS:
            if data_root is None:
                raise ValueError(f"dataset {name} needs --data-root (a synthetic data root holding scenes/)")
            _check_synthetic(Path(data_root))
            register_synthetic(data_root)
        elif name in DatasetCatalog.list():
            _check_builtin(name)
        else:
            known = ", ".join(sorted(SYNTHETIC_SPLITS) + ["coco_2017_*", "voc_20*_*", "..."])
            raise ValueError(f"dataset {name!r} is not registered; expected a detectron2 builtin name or one of {known}")


def evaluator_type(name: str) -> str:
    """``coco`` or ``pascal_voc`` (detectron2's metadata field), for choosing the evaluator."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(name)
    return getattr(meta, "evaluator_type", "coco")
