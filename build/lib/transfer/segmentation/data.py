"""Where a segmentation config's datasets live, and whether they are there (checked before training).

mmseg finds a missing folder only when the data loader is first built, after the model, with a
traceback from deep inside a dataset class; an empty folder gives an empty dataset and a sampler
error. Here every dataset of the train/val/test loaders is checked up front:

- its ``data_root`` does not exist -> :class:`TaskSkipped` (the dataset is simply not on this machine);
- ``data_root`` exists but an expected folder, split file or marker is missing, or a folder holds
  no file with the expected suffix -> :class:`DataLayoutError`, one line naming what was expected.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Iterator

from transfer.records import TaskSkipped

LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")
WRAPPERS_ONE = ("RepeatDataset", "ClassBalancedDataset", "MultiImageMixDataset")


class DataLayoutError(ValueError):
    """``data_root`` exists but does not have the layout the config expects (one line)."""


def dataset_cfgs(cfg) -> Iterator[tuple[str, dict]]:
    """``(where, dataset cfg)`` for every leaf dataset of the train/val/test loaders."""
    for loader in LOADERS:
        dataset = (cfg.get(loader) or {}).get("dataset")
        if dataset is not None:
            yield from _leaves(dataset, f"{loader}.dataset")


def _leaves(dataset: dict, where: str) -> Iterator[tuple[str, dict]]:
    dtype = str(dataset.get("type", "")).split(".")[-1]
    if dtype == "ConcatDataset":
        for i, child in enumerate(dataset["datasets"]):
            yield from _leaves(child, f"{where}.datasets[{i}]")
    elif dtype in WRAPPERS_ONE:
        yield from _leaves(dataset["dataset"], f"{where}.dataset")
    else:
        yield where, dataset


def set_data_root(cfg, root: str | Path) -> None:
    """Point every dataset of the config at ``root`` (the ``--data-root`` option)."""
    cfg.data_root = str(root)
    for _, dataset in dataset_cfgs(cfg):
        dataset["data_root"] = str(root)


def _suffixes(dataset: dict) -> tuple[str, str]:
    """The image and label suffixes: the config's, else the dataset class's defaults."""
    from mmseg.registry import DATASETS

    cls = DATASETS.get(str(dataset["type"]))
    params = inspect.signature(cls.__init__).parameters if cls is not None else {}

    def default(name: str, fallback: str) -> str:
        value = dataset.get(name)
        if value is None and name in params and params[name].default is not inspect.Parameter.empty:
            value = params[name].default
        return value if isinstance(value, str) else fallback

    return default("img_suffix", ".jpg"), default("seg_map_suffix", ".png")


def _has_file(folder: Path, suffix: str) -> bool:
    """Whether ``folder`` (recursively, stopping at the first hit) holds a ``*suffix`` file."""
    for _, _, files in os.walk(folder):
        if any(f.endswith(suffix) for f in files):
            return True
    return False


def check_data_layout(cfg, dataset_name: str) -> None:
    """Raise TaskSkipped / DataLayoutError unless every dataset of ``cfg`` is on disk as expected."""
    marker = cfg.get("data_marker")
    hint = f"; {cfg.data_hint}" if cfg.get("data_hint") else ""
    for where, dataset in dataset_cfgs(cfg):
        root = Path(str(dataset.get("data_root") or "."))
        prefix = dataset.get("data_prefix") or {}
        expected = [p for p in (prefix.get("img_path"), prefix.get("seg_map_path"), dataset.get("ann_file")) if p]
        if not root.is_dir():
            raise TaskSkipped(
                f"dataset {dataset_name} not found: {root} does not exist (expected a folder holding "
                f"{', '.join(expected)}; pass --data-root){hint}"
            )
        if marker and not (root / marker).is_file():
            raise DataLayoutError(
                f"{root}: no {marker} marker, the {dataset_name} data is incomplete{hint}"
            )
        missing = [p for p in expected if not (root / p).exists()]
        if missing:
            raise DataLayoutError(
                f"{root}: wrong layout for {dataset_name} ({where}): missing {', '.join(missing)} "
                f"(expected {', '.join(expected)} under data_root){hint}"
            )
        img_suffix, seg_suffix = _suffixes(dataset)
        for folder, suffix in ((prefix.get("img_path"), img_suffix), (prefix.get("seg_map_path"), seg_suffix)):
            if folder and not _has_file(root / folder, suffix):
                raise DataLayoutError(
                    f"{root / folder}: no *{suffix} files for {dataset_name} ({where}); "
                    f"expected images/labels named *{suffix} there{hint}"
                )
