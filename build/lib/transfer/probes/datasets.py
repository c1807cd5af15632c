"""The dataset registry of the probes: name -> reader, protocol splits, metric (PROTOCOLS.md).

``python -m transfer.probes.linear --data ROOT --dataset cifar10`` reads CIFAR-10 as downloaded (see
:mod:`transfer.probes.readers` for the layouts) and gives the linear probe AugSelf's splits:

* ``random_split`` splits (AugSelf ``datasets.py``): ``torch.utils.data.random_split`` of the
  official training part with ``torch.Generator().manual_seed(seed)``. Equal seeds give equal
  splits only under the same torch random number generator (``randperm`` on CPU); torch has kept
  it stable for years and ``tests/transfer/probes/test_datasets.py`` pins the first indices of the CIFAR-10 split,
  so a change would fail there rather than silently move the split. When a copy of the dataset
  has another size than AugSelf's (a stand-in, images removed) the lengths are scaled to it and
  the record says ``exact: false``.
* official validation parts where they exist (DTD ``val1``, Flowers-102 ``val``, Aircraft ``val``);
* AugSelf's split files (``splits/{caltech101,cub200,sun397}.pth`` of its repository: index lists
  into the official order) through ``--split-file``; without one, a seeded class-stratified split
  with the same per-class counts (recorded as such — the sizes are AugSelf's, the indices not).

Split names the probes take: ``train``, ``val``, ``test`` and ``trainval`` (train + val: the kNN
bank). A plain ImageFolder root (``--dataset`` not a registry name) keeps ``<root>/<split>/``;
one without ``val/`` gets a seeded class-stratified 10 % of ``train/`` as validation (recorded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from transfer.probes.readers import READERS, Items, LayoutError, imagefolder
from transfer.probes.vissl_readers import VISSL_READERS

__all__ = ["Protocol", "REGISTRY", "load_split", "random_split_indices", "stratified_indices", "LayoutError",
           "headline_metric"]

VAL_FRACTION = 0.1  # a user's ImageFolder without val/: this share of each class of train/ validates


@dataclass(frozen=True)
class Protocol:
    """How the probes evaluate one dataset: where each split comes from, and the reported metric.

    ``split``: "random" (AugSelf random_split of ``part``: ``lengths``, ``seed``), "official"
    (``parts`` maps train/val/test to reader parts), or "per_class" (seeded stratified split of
    ``part`` with ``per_class`` = (train, val) images per class; test = the rest, or ``test_part``).
    """

    name: str
    metric: str                       # "top1" or "class_avg" (mean per-class accuracy)
    split: str
    parts: tuple = ()                 # official: ((probe split, reader part), ...)
    part: str = "train"               # random / per_class: the part that is split
    lengths: tuple = ()               # random: AugSelf's (train, val) sizes
    seed: int = 0
    per_class: tuple = ()             # per_class: (train, val) images per class
    test_part: str | None = "test"    # per_class: None = the rest of ``part`` is the test split
    fewshot: str | None = None        # few-shot: the pooled reader parts (AugSelf)


REGISTRY = {p.name: p for p in [
    Protocol("cifar10", "top1", "random", lengths=(45000, 5000), seed=43),
    Protocol("cifar100", "top1", "random", lengths=(45000, 5000), seed=44),
    Protocol("food101", "top1", "random", lengths=(68175, 7575), seed=42),
    Protocol("pets", "class_avg", "random", part="trainval", lengths=(2940, 740), seed=49),
    Protocol("stl10", "top1", "random", lengths=(4500, 500), seed=50),
    Protocol("mit67", "top1", "random", lengths=(4690, 670), seed=51),
    Protocol("dtd", "top1", "official", parts=(("train", "train"), ("val", "val"), ("test", "test"))),
    Protocol("flowers102", "class_avg", "official", parts=(("train", "train"), ("val", "val"), ("test", "test"))),
    Protocol("aircraft", "class_avg", "official", parts=(("train", "train"), ("val", "val"), ("test", "test"))),
    Protocol("caltech101", "class_avg", "per_class", part="all", per_class=(25, 5), test_part=None),
    Protocol("sun397", "top1", "per_class", part="Training", per_class=(40, 10), test_part="Testing"),
    Protocol("cub200", "top1", "per_class", per_class=(None, 5), fewshot="train+test"),
    # not in AugSelf's linear suite (ssl-transfer's): val = a seeded stratified 20 % of train
    Protocol("cars", "top1", "per_class", per_class=(None, 0.2)),
    # few-shot only (AugSelf transfer_few_shot.py): ImageFolder <root>/<split>/<class>/
    Protocol("fc100", "top1", "imagefolder", fewshot="test"),
    Protocol("plant_disease", "top1", "imagefolder", fewshot="train+test"),
    # VISSL's transfer benchmarks (transfer.probes.vissl_readers): official splits only. VOC07's SVM fits on
    # trainval (the probes' "train") and reports mAP on test; Places205 and iNat18 have no public test
    # labels, so their benchmark reports on val (the classification engine's tasks read them).
    # ImageNet-1k (DINO eval_knn: the train split is the bank, val the queries; transfer.imagenet reads both layouts)
    Protocol("imagenet", "top1", "official", parts=(("train", "train"), ("val", "val"))),
    Protocol("voc07", "mAP", "official", parts=(("train", "trainval"), ("test", "test"))),
    Protocol("places205", "top1", "official", parts=(("train", "train"), ("val", "val"))),
    Protocol("inat18", "top1", "official", parts=(("train", "train"), ("val", "val"))),
]}
ALL_READERS = {**READERS, **VISSL_READERS}


def headline_metric(task: str, dataset: str | None) -> str | None:
    """The one number a report shows for ``task`` on ``dataset``: the registry's metric (PROTOCOLS.md).

    linear: ``top1`` or ``class_avg``; kNN: the same at k = 20 (``top1_k20`` / ``class_avg_k20``);
    few-shot: None (the first ``acc_{W}way_{K}shot``); the VOC07 SVM: ``mAP``. Records, tables, differences and the
    forest plot all take it from here (the record's ``headline``).
    """
    metric = REGISTRY[dataset].metric if dataset in REGISTRY else "top1"
    return {"linear": metric, "knn": f"{metric}_k20", "svm": "mAP"}.get(task)


def random_split_indices(n: int, lengths: tuple, seed: int) -> tuple[list[list[int]], bool]:
    """AugSelf's ``random_split(range(n), lengths, generator=torch.Generator().manual_seed(seed))``.

    Returns (index lists, exact); when ``n != sum(lengths)`` the lengths are scaled to ``n``
    (exact = False).
    """
    exact = n == sum(lengths)
    if not exact:
        val = max(1, round(n * lengths[1] / sum(lengths))) if n > 1 else 0
        lengths = (n - val, val)
    parts = torch.utils.data.random_split(range(n), list(lengths), generator=torch.Generator().manual_seed(seed))
    return [list(p.indices) for p in parts], exact


def stratified_indices(labels: list[int], counts: tuple, seed: int) -> list[list[int]]:
    """Per class, a seeded shuffle cut into (train, val, rest): ``counts`` = (train, val) per class.

    A count may be ``None`` (everything not in the other) or a fraction < 1 (of the class).
    Indices are returned sorted (dataset order).
    """
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    out: list[list[int]] = [[], [], []]
    for y in sorted(by_class):
        idx = by_class[y]
        perm = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        n_train, n_val = counts
        if isinstance(n_val, float):
            n_val = max(1, round(n_val * len(idx))) if len(idx) > 1 else 0
        if n_train is None:
            n_train = len(idx) - n_val
        n_val = min(n_val, len(idx) - min(n_train, len(idx)))
        out[0] += perm[:n_train]
        out[1] += perm[n_train:n_train + n_val]
        out[2] += perm[n_train + n_val:]
    return [sorted(o) for o in out]


def _read(protocol: Protocol, root: Path, part: str) -> Items:
    if protocol.split == "imagefolder":
        return imagefolder(root, part)
    try:
        items = ALL_READERS[protocol.name](root, part)
    except LayoutError:
        raise
    except Exception as e:  # noqa: BLE001 - a reader's KeyError, IndexError, torchvision's errors: the user's files
        raise LayoutError(f"dataset {protocol.name} at {root}: part {part!r} cannot be read in the download layout "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:150]})") from None
    if protocol.name == "food101":  # AugSelf lists Food-101 class by class (meta/classes.txt order)
        order = sorted(range(len(items)), key=lambda i: items.labels[i])
        items = items.subset(order)
    return items


def _split_file(path: Path) -> tuple[list[int], ...]:
    try:
        lists = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input error
        raise LayoutError(f"--split-file {path}: not a readable index file ({type(e).__name__})") from None
    if not isinstance(lists, (tuple, list)) or not all(isinstance(x, (list, tuple, torch.Tensor)) for x in lists):
        raise LayoutError(f"--split-file {path}: expected a tuple of index lists (AugSelf splits/*.pth)")
    return tuple([int(i) for i in x] for x in lists)


def _protocol_split(protocol: Protocol, root: Path, split: str, split_file: Path | None) -> Items:
    if protocol.split == "official":
        if split not in dict(protocol.parts):
            raise LayoutError(f"dataset {protocol.name}: no {split!r} split (its official splits: "
                              f"{', '.join(f'{s} = {p}' for s, p in protocol.parts)})")
        part = dict(protocol.parts)[split]
        return _tag(_read(protocol, root, part), kind="official", part=part)
    if split == "test" and protocol.test_part is not None:
        return _tag(_read(protocol, root, protocol.test_part), kind="official", part=protocol.test_part)
    items = _read(protocol, root, protocol.part)
    which = {"train": 0, "val": 1, "test": 2}[split]
    if split_file is not None:
        lists = _split_file(split_file)
        if which >= len(lists) or (lists[which] and max(lists[which]) >= len(items)):
            raise LayoutError(f"--split-file {split_file}: no valid index list {which} for split {split} "
                              f"of {len(items)} {protocol.name} images")
        return items.subset(lists[which], kind="split_file", file=str(split_file), part=protocol.part)
    if protocol.split == "random":
        lists, exact = random_split_indices(len(items), protocol.lengths, protocol.seed)
        return items.subset(lists[which], kind="random_split", seed=protocol.seed, part=protocol.part,
                            lengths=[len(x) for x in lists], augself_lengths=list(protocol.lengths), exact=exact,
                            generator="torch.Generator().manual_seed(seed)")
    lists = stratified_indices(items.labels, protocol.per_class, protocol.seed)
    return items.subset(lists[which], kind="stratified", seed=protocol.seed, part=protocol.part,
                        per_class=list(protocol.per_class), lengths=[len(x) for x in lists])


def _tag(items: Items, **info) -> Items:
    items.info = {**items.info, **info}
    return items


def load_split(root: str | Path, split: str, dataset: str | None = None, split_file: str | Path | None = None,
               fewshot: bool = False, carve_val: bool = False) -> Items:
    """Items of ``split`` ('+' pools) of a registry dataset, or of ``root/<split>`` for a plain ImageFolder.

    ``fewshot``: ``split`` names reader parts (e.g. CUB ``train+test``), pooled, as AugSelf's few-shot loader.
    ``carve_val`` (the linear probe): a plain ImageFolder without ``val/`` gets its ``train`` and
    ``val`` from a seeded, class-stratified split of ``train/``.
    """
    root = Path(root)
    protocol = REGISTRY.get(dataset or "")
    split_file = Path(split_file) if split_file else None
    parts = split.split("+")
    if protocol is None:
        if carve_val and split in ("train", "val") and not (root / "val").is_dir() and (root / "train").is_dir():
            return _imagefolder_val(root, split)
        return _tag(imagefolder(root, split), kind="folders", part=split)
    if protocol.split == "imagefolder":
        items = [_tag(imagefolder(root, split), kind="folders", part=split)]
    elif fewshot:
        items = [_tag(_read(protocol, root, p), kind="official", part=p) for p in parts]
    else:
        expanded = [s for p in parts for s in (("train", "val") if p == "trainval" else (p,))]
        for s in expanded:
            if s not in ("train", "val", "test"):
                raise LayoutError(f"dataset {protocol.name}: split {s!r} is not one of train, val, test, trainval")
        items = [_protocol_split(protocol, root, s, split_file) for s in expanded]
    out = items[0]
    for more in items[1:]:
        out = out.concat(more)
    return out


def _imagefolder_val(root: Path, split: str) -> Items:
    """A user's ImageFolder without val/: a seeded, class-stratified VAL_FRACTION of train/ (recorded)."""
    items = imagefolder(root, "train")
    lists = stratified_indices(items.labels, (None, VAL_FRACTION), seed=0)
    which = 0 if split == "train" else 1
    return items.subset(lists[which], kind="stratified", part="train", seed=0, val_fraction=VAL_FRACTION,
                        lengths=[len(lists[0]), len(lists[1])], note=f"{root}/val does not exist")
