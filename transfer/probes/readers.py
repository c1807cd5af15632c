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
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mast.data.folder import DatasetError, list_images

__all__ = ["Items", "LayoutError", "READERS", "find_root"]


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

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: list[int], **info) -> "Items":
        return replace(self, labels=[self.labels[i] for i in indices],
                       paths=None if self.paths is None else [self.paths[i] for i in indices],
                       array=None if self.array is None else self.array[np.asarray(indices, dtype=np.int64)],
                       info={**self.info, **info})

    def concat(self, other: "Items") -> "Items":
        if other.classes != self.classes:
            raise LayoutError(f"cannot pool splits with different classes ({len(self.classes)} vs {len(other.classes)})")
        return replace(self, labels=self.labels + other.labels,
                       paths=None if self.paths is None else self.paths + other.paths,
                       array=None if self.array is None else np.concatenate([self.array, other.array]),
                       info={"pooled": [self.info, other.info]})

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
    data, labels = [], []
    for name in files:  # torchvision's order: the batches in turn, rows in file order
        entry = _unpickle(folder / name)
        data.append(np.asarray(entry["data"], dtype=np.uint8))
        labels += list(entry["fine_labels" if hundred else "labels"])
    array = np.vstack(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Items(labels, list(_unpickle(folder / meta)[key]), array=array)


def _stl10(root: Path, part: str) -> Items:
    folder = find_root(root, "stl10_binary/class_names.txt", "stl10_binary", "stl10") / "stl10_binary"
    raw = np.fromfile(folder / f"{part}_X.bin", dtype=np.uint8)
    # column-major 3x96x96 images, as torchvision's STL10 reads them; stored here as HWC
    array = raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
    labels = (np.fromfile(folder / f"{part}_y.bin", dtype=np.uint8).astype(np.int64) - 1).tolist()
    if len(labels) != len(array):
        raise LayoutError(f"{folder}: {part}_X.bin has {len(array)} images but {part}_y.bin {len(labels)} labels")
    return Items(labels, (folder / "class_names.txt").read_text().split(), array=array)


def _flowers(root: Path, part: str) -> Items:
    from scipy.io import loadmat

    folder = find_root(root, "flowers-102/setid.mat", "flowers-102", "flowers102") / "flowers-102"
    ids = loadmat(folder / "setid.mat", squeeze_me=True)[{"train": "trnid", "val": "valid", "test": "tstid"}[part]]
    labels = np.atleast_1d(loadmat(folder / "imagelabels.mat", squeeze_me=True)["labels"])
    classes = [str(c) for c in range(1, int(labels.max()) + 1)]  # 1..102: the labels are the class names
    return Items([int(labels[i - 1]) - 1 for i in np.atleast_1d(ids).tolist()], classes,
                 paths=[folder / "jpg" / f"image_{i:05d}.jpg" for i in np.atleast_1d(ids).tolist()])


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
    except DatasetError:  # an empty split of a pooled pair; all of them empty is refused by the caller
        return []


READERS = {
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
