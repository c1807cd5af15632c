"""Readers of the classification datasets in the layouts their downloads unpack to.

Each reader takes the dataset root and one *official part* (``train``, ``test``, ``val``,
``trainval``, ...) and returns :class:`Items`: image paths (or, for the binary datasets, one uint8
array) with labels and class names, in the order the reference code (AugSelf ``datasets.py``,
torchvision) enumerates them — AugSelf's ``random_split`` indices refer to that order.

``root`` is what ``torchvision.datasets.<X>(root=...)`` takes (``download=True`` creates it), or
the folder torchvision creates inside it (``cifar-10-batches-py``, ``flowers-102``, ...): both are
accepted. Where torchvision reads the layout without checksumming the user's files, its class
does the parsing (DTD, Food-101, Oxford-IIIT Pet, SUN397's class list, Caltech-101, Stanford
Cars, FGVC-Aircraft). Three are read here instead, for a stated reason:

* CIFAR-10/-100: torchvision calls ``pickle.load`` on the batch files; the project never
  unpickles user-writable files, so they are read with an unpickler that admits numpy arrays only.
* STL-10: torchvision md5-checks all three binaries (2.6 GB, the unlabeled split too) on every
  construction; the format is two raw uint8 files per split.
* Flowers-102: torchvision md5-checks the two .mat files; the same two ``loadmat`` calls are made here.

CUB-200-2011 (``CUB_200_2011/images.txt``, ``train_test_split.txt``, ...) and MIT-67
(``Images/`` + ``TrainImages.txt``/``TestImages.txt``) have no torchvision class.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mast.data.folder import DatasetError, NoImagesError, list_images

__all__ = ["Items", "LayoutError", "READERS", "find_root", "check_disjoint", "check_lengths"]


class LayoutError(ValueError):
    """A dataset folder that is not in the expected layout (one line naming what is missing)."""


@dataclass
class Items:
    """Images of one split: ``paths`` (files) or ``array`` (uint8 [N, H, W, 3]), labels, class names."""

    labels: list[int]
    classes: list[str]
    paths: list[Path] | None = None
    array: np.ndarray | None = None
    info: dict = field(default_factory=dict)  # how the split was made (recorded)
    origins: np.ndarray | None = None  # array items: int64 [N, 3] (st_dev, st_ino, row) of the file each row came from
    targets: np.ndarray | None = None  # multi-label datasets (VOC07): int8 [N, C], 1 present / 0 absent / -1 difficult

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: list[int], **info) -> "Items":
        return replace(self, labels=[self.labels[i] for i in indices],
                       paths=None if self.paths is None else [self.paths[i] for i in indices],
                       array=None if self.array is None else self.array[np.asarray(indices, dtype=np.int64)],
                       origins=None if self.origins is None else self.origins[np.asarray(indices, dtype=np.int64)],
                       targets=None if self.targets is None else self.targets[np.asarray(indices, dtype=np.int64)],
                       info={**self.info, **info})

    def concat(self, other: "Items") -> "Items":
        if other.classes != self.classes:
            raise LayoutError(f"cannot pool splits with different classes ({len(self.classes)} vs {len(other.classes)})")
        return replace(self, labels=self.labels + other.labels,
                       paths=None if self.paths is None else self.paths + other.paths,
                       array=None if self.array is None else np.concatenate([self.array, other.array]),
                       origins=None if self.origins is None or other.origins is None
                       else np.concatenate([self.origins, other.origins]),
                       targets=None if self.targets is None or other.targets is None
                       else np.concatenate([self.targets, other.targets]),
                       info={"pooled": [self.info, other.info]})

    def identities(self) -> list[tuple]:
        """What each item IS, whatever it is called: the file's (st_dev, st_ino) with symlinks followed
        (a split that is a symlink to another split, or hard links, give the same identities), or, for
        the binary datasets, (st_dev, st_ino, row) of the batch file the row was read from."""
        if self.paths is None:
            return [tuple(o) for o in self.origins.tolist()] if self.origins is not None else []
        out = []
        for path in self.paths:
            try:
                st = os.stat(path)
                out.append((st.st_dev, st.st_ino))
            except OSError:
                out.append((os.path.realpath(path),))
        return out

    def fingerprint(self) -> str:
        """Identity of the content for the feature cache: file stats, or the array's bytes."""
        h = hashlib.sha256(repr(self.classes).encode())
        h.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        if self.array is not None:
            h.update(np.ascontiguousarray(self.array).data)
        for path in self.paths or ():
            st = path.stat()
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def find_root(root: Path, marker: str, base: str, name: str) -> Path:
    """The torchvision-style root holding ``marker``: ``root`` itself, or its parent when ``root`` is ``base``."""
    for candidate in (root, root.parent if root.name == base else None):
        if candidate is not None and (candidate / marker).exists():
            return candidate
    raise LayoutError(f"dataset {name}: {root / marker} not found (expected the download layout "
                      f"{root}/{marker}; see docs/PROTOCOLS.md)")


def check_disjoint(test: tuple[str, "Items"], fits: list[tuple[str, "Items"]], task: str) -> None:
    """The one disjointness rule of the probes: no image of the test split may be an image a probe
    fits on, compared by file identity (:meth:`Items.identities`), not by name; LayoutError naming
    the splits, the count and one shared file otherwise."""
    test_name, test_items = test
    where = {ident: i for i, ident in enumerate(test_items.identities())}
    for fit_name, items in fits:
        shared = [i for i, ident in enumerate(items.identities()) if ident in where]
        if shared:
            example = items.paths[shared[0]] if items.paths is not None else f"row {shared[0]}"
            raise LayoutError(f"{task}: test split {test_name!r} and {fit_name!r} share {len(shared)} of "
                              f"{len(test_items)} images (e.g. {example}: a symlinked or copied split?); "
                              "evaluating on the images the probe fits on is refused")


def check_lengths(source: Path | str, images: int, labels: int, labels_source: Path | str | None = None) -> None:
    """The one length rule of the binary readers (CIFAR, STL-10): as many labels as images, or a
    LayoutError naming the file (labels would otherwise be silently shifted onto other images)."""
    if images != labels:
        other = f"{labels_source} has" if labels_source else "but"
        raise LayoutError(f"{source}: {images} images {'and ' if labels_source else ''}{other} {labels} labels "
                          "(a truncated or mixed-up file?)")


def check_label_range(source: Path | str, labels: list[int], n_classes: int) -> None:
    """Every label indexes one of the ``n_classes`` class names, or a LayoutError naming the file."""
    bad = [y for y in labels if not 0 <= y < n_classes]
    if bad:
        raise LayoutError(f"{source}: label {bad[0]} outside 0..{n_classes - 1} ({len(bad)} such labels; "
                          f"{n_classes} classes)")


class _ArrayUnpickler(pickle.Unpickler):
    """Admits the globals a pickled numpy array needs, nothing else (no code from the file runs)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"),
               ("_codecs", "encode")}  # how Python 3 pickles bytes at protocol 2 (str -> bytes; runs no code)

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise LayoutError(f"{path}: not a readable CIFAR batch ({type(e).__name__}: {str(e)[:100]})") from None


def _cifar(root: Path, part: str, hundred: bool) -> Items:
    base = "cifar-100-python" if hundred else "cifar-10-batches-py"
    meta, key = ("meta", "fine_label_names") if hundred else ("batches.meta", "label_names")
    folder = find_root(root, f"{base}/{meta}", base, "cifar100" if hundred else "cifar10") / base
    files = {"train": ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)],
             "test": ["test"] if hundred else ["test_batch"]}[part]
    classes = list(_entry(folder / meta, _unpickle(folder / meta), key))
    data, labels, origins = [], [], []
    for name in files:  # torchvision's order: the batches in turn, rows in file order
        x, y = _cifar_batch(folder / name, "fine_labels" if hundred else "labels")
        check_label_range(folder / name, y, len(classes))
        st = os.stat(folder / name)
        origins.append(np.stack([np.full(len(y), st.st_dev), np.full(len(y), st.st_ino), np.arange(len(y))], 1))
        data.append(x)
        labels += y
    array = np.vstack(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Items(labels, [str(c) for c in classes], array=array, origins=np.concatenate(origins).astype(np.int64))


def _entry(path: Path, batch, key: str):
    if not isinstance(batch, dict) or key not in batch:
        raise LayoutError(f"{path}: no {key!r} entry (not a CIFAR batch of this dataset?)")
    return batch[key]


def _cifar_batch(path: Path, key: str) -> tuple[np.ndarray, list[int]]:
    """(uint8 [N, 3072], N labels) of one batch file, or a LayoutError naming it."""
    batch = _unpickle(path)
    data, labels = _entry(path, batch, "data"), _entry(path, batch, key)
    try:
        data, labels = np.asarray(data, dtype=np.uint8), [int(y) for y in labels]
    except (TypeError, ValueError) as e:
        raise LayoutError(f"{path}: 'data' or {key!r} is not numeric ({type(e).__name__})") from None
    if data.size % 3072:
        raise LayoutError(f"{path}: 'data' holds {data.size} bytes, not a whole number of 32x32x3 images")
    data = data.reshape(-1, 3072)
    check_lengths(path, len(data), len(labels))
    return data, labels


def _stl10(root: Path, part: str) -> Items:
    folder = find_root(root, "stl10_binary/class_names.txt", "stl10_binary", "stl10") / "stl10_binary"
    x_file, y_file = folder / f"{part}_X.bin", folder / f"{part}_y.bin"
    try:
        raw = np.fromfile(x_file, dtype=np.uint8)
        labels = (np.fromfile(y_file, dtype=np.uint8).astype(np.int64) - 1).tolist()
        classes = (folder / "class_names.txt").read_text().split()
    except OSError as e:
        raise LayoutError(f"dataset stl10: {e.filename or folder}: cannot be read ({e.strerror or e})") from None
    if raw.size % (3 * 96 * 96):
        raise LayoutError(f"{x_file}: {raw.size} bytes, not a whole number of 96x96x3 images")
    # column-major 3x96x96 images, as torchvision's STL10 reads them; stored here as HWC
    array = raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
    check_lengths(x_file, len(array), len(labels), y_file)
    check_label_range(y_file, labels, len(classes))
    st = os.stat(x_file)
    origins = np.stack([np.full(len(labels), st.st_dev), np.full(len(labels), st.st_ino), np.arange(len(labels))], 1)
    return Items(labels, classes, array=array, origins=origins.astype(np.int64))


def _flowers(root: Path, part: str) -> Items:
    folder = find_root(root, "flowers-102/setid.mat", "flowers-102", "flowers102") / "flowers-102"
    ids = np.atleast_1d(_loadmat(folder / "setid.mat", {"train": "trnid", "val": "valid", "test": "tstid"}[part]))
    labels = np.atleast_1d(_loadmat(folder / "imagelabels.mat", "labels"))
    if not (np.issubdtype(ids.dtype, np.integer) and np.issubdtype(labels.dtype, np.integer)) or not labels.size:
        raise LayoutError(f"{folder}: setid.mat / imagelabels.mat do not hold integer ids and labels")
    if ids.size and not 1 <= ids.min() <= ids.max() <= len(labels):
        raise LayoutError(f"{folder / 'setid.mat'}: image ids outside 1..{len(labels)} (imagelabels.mat's length)")
    classes = [str(c) for c in range(1, int(labels.max()) + 1)]  # 1..102: the labels are the class names
    return Items([int(labels[i - 1]) - 1 for i in ids.tolist()], classes,
                 paths=[folder / "jpg" / f"image_{i:05d}.jpg" for i in ids.tolist()])


def _loadmat(path: Path, key: str) -> np.ndarray:
    """One variable of a MATLAB file, or a LayoutError naming the file (MatReadError, a missing key)."""
    from scipy.io import loadmat

    try:
        return np.asarray(loadmat(path, squeeze_me=True)[key])
    except KeyError:
        raise LayoutError(f"{path}: no variable {key!r} (not the official Flowers-102 file?)") from None
    except Exception as e:  # noqa: BLE001 - scipy's MatReadError, ValueError, OSError: the user's file
        raise LayoutError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {' '.join(str(e).split())[:100]})") from None


def _torchvision(cls_name: str, marker: str, base: str, name: str, paths_attr: str, **kwargs):
    def read(root: Path, part: str) -> Items:
        import torchvision.datasets as tvd

        tv_root = find_root(root, marker, base, name)
        split_kw = {"split": part} if part != "all" else {}
        ds = getattr(tvd, cls_name)(str(tv_root), download=False, **split_kw, **kwargs)
        if cls_name == "StanfordCars":  # (path, label) pairs
            paths, labels = [Path(p) for p, _ in ds._samples], [int(y) for _, y in ds._samples]
        elif cls_name == "Caltech101":
            folder = Path(ds.root) / "101_ObjectCategories"
            paths = [folder / ds.categories[y] / f"image_{i:04d}.jpg" for i, y in zip(ds.index, ds.y)]
            labels = list(ds.y)
        else:  # torchvision keeps the file list and labels in private lists (pinned torchvision)
            paths, labels = [Path(p) for p in getattr(ds, paths_attr)], list(ds._labels)
        classes = list(getattr(ds, "classes", None) or ds.categories)
        return Items(labels, [str(c) for c in classes], paths=paths)
    return read


def _sun397(root: Path, part: str) -> Items:
    """Partition 1 of the official split (``Training_01.txt`` / ``Testing_01.txt``), in file order (AugSelf).

    torchvision's SUN397 root; torchvision's class lists every image (no partition), so the
    partition file is read here.
    """
    tv_root = find_root(root, "SUN397/ClassName.txt", "SUN397", "sun397")
    lists = [p / f"{part}_01.txt" for p in (tv_root, tv_root / "SUN397", tv_root / "Partitions")]
    listing = next((p for p in lists if p.is_file()), None)
    if listing is None:
        raise LayoutError(f"dataset sun397: {part}_01.txt not found in {tv_root}, {tv_root}/SUN397 or "
                          f"{tv_root}/Partitions (the official Partitions.zip)")
    classes = [c.strip() for c in (tv_root / "SUN397" / "ClassName.txt").read_text().splitlines() if c.strip()]
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for line in listing.read_text().split():
        paths.append(tv_root / "SUN397" / line.lstrip("/"))
        labels.append(index["/" + "/".join(line.strip("/").split("/")[:-1])])
    return Items(labels, [c[3:] for c in classes], paths=paths)  # torchvision's names: "/a/abbey" -> "abbey"


def _cub(root: Path, part: str) -> Items:
    """CUB_200_2011 official files; images in (class folder, file name) order, as ImageFolder lists them."""
    folder = find_root(root, "CUB_200_2011/images.txt", "CUB_200_2011", "cub200") / "CUB_200_2011"
    names = dict(line.split(maxsplit=1) for line in (folder / "images.txt").read_text().splitlines() if line.strip())
    is_train = dict(line.split() for line in (folder / "train_test_split.txt").read_text().splitlines() if line.strip())
    wanted = {"train": {"1"}, "test": {"0"}, "all": {"0", "1"}}[part]
    rel = sorted(names[i] for i in names if is_train[i] in wanted)
    classes = sorted({r.split("/")[0] for r in names.values()})
    index = {c: i for i, c in enumerate(classes)}
    return Items([index[r.split("/")[0]] for r in rel], classes, paths=[folder / "images" / r for r in rel])


def _mit67(root: Path, part: str) -> Items:
    """``Images/<class>/`` with ``TrainImages.txt``/``TestImages.txt``, or ImageFolder ``train/``/``test/``."""
    listing = root / {"train": "TrainImages.txt", "test": "TestImages.txt"}[part]
    if not listing.is_file():
        return imagefolder(root, part)
    rel = sorted(line.strip() for line in listing.read_text().splitlines() if line.strip())
    classes = sorted({r.split("/")[0] for r in rel})
    index = {c: i for i, c in enumerate(classes)}
    return Items([index[r.split("/")[0]] for r in rel], classes, paths=[root / "Images" / r for r in rel])


def imagefolder(root: Path, part: str) -> Items:
    """``root/<part>/<class>/<image>``; ``a+b`` pools parts by class name (classes: the sorted union)."""
    folders = [root / s for s in part.split("+")]
    for folder in folders:
        if not folder.is_dir():
            raise LayoutError(f"dataset split {folder} does not exist (expected {root}/<split>/<class>/<image>)")
    classes = sorted({d.name for f in folders for d in f.iterdir() if d.is_dir()})
    index = {c: i for i, c in enumerate(classes)}
    pairs = [(path, index[path.relative_to(f).parts[0]]) for f in folders for path in _images(f)]
    paths, labels = [p for p, _ in pairs], [y for _, y in pairs]
    if not paths:
        where = " + ".join(str(f) for f in folders)
        raise LayoutError(f"dataset split {where} is empty: no images in <class>/ folders ({len(classes)} class folders)")
    return Items(labels, classes, paths=paths)


def _images(folder: Path) -> list[Path]:
    try:
        return list_images(folder, what="--data")
    except NoImagesError:  # an empty split of a pooled pair; all of them empty is refused by the caller
        return []
    except DatasetError as e:  # a directory loop, a folder reached twice: the user's layout
        raise LayoutError(str(e)) from None


def _imagenet(root: Path, part: str) -> Items:
    """ImageNet ``train`` or ``val`` in either download layout (``transfer.imagenet``), ImageFolder class order.

    A copy with fewer images than ILSVRC-2012 is read (the kNN probe is cheap to point at a stand-in) and
    recorded as ``exact: false`` with its sizes, so it is never mistaken for the full protocol.
    """
    from transfer.imagenet import FULL, ImageNetLayoutError, split_samples

    if part not in ("train", "val"):
        raise LayoutError(f"dataset imagenet: part {part!r} is not one of train, val (the official split)")
    try:
        layout, classes, samples = split_samples(root, part)
    except ImageNetLayoutError as e:
        raise LayoutError(f"dataset imagenet: {e}") from None
    exact = len(classes) == FULL["classes"] and len(samples) == FULL[part]
    return Items([y for _, y in samples], classes, paths=[layout.base / rel for rel, _ in samples],
                 info={"layout": layout.kind, "exact": exact, "n_images": len(samples), "n_classes": len(classes)})


READERS = {
    "imagenet": _imagenet,
    "cifar10": lambda root, part: _cifar(root, part, hundred=False),
    "cifar100": lambda root, part: _cifar(root, part, hundred=True),
    "stl10": _stl10,
    "flowers102": _flowers,
    "dtd": _torchvision("DTD", "dtd/dtd/labels", "dtd", "dtd", "_image_files"),
    "food101": _torchvision("Food101", "food-101/meta", "food-101", "food101", "_image_files"),
    "pets": _torchvision("OxfordIIITPet", "oxford-iiit-pet/annotations", "oxford-iiit-pet", "pets", "_images"),
    "caltech101": _torchvision("Caltech101", "caltech101/101_ObjectCategories", "caltech101", "caltech101", ""),
    "cars": _torchvision("StanfordCars", "stanford_cars/devkit", "stanford_cars", "cars", ""),
    "aircraft": _torchvision("FGVCAircraft", "fgvc-aircraft-2013b/data", "fgvc-aircraft-2013b", "aircraft",
                             "_image_files"),
    "sun397": _sun397,
    "cub200": _cub,
    "mit67": _mit67,
}
