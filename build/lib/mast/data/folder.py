"""Image folders for pretraining and for the kNN monitor.

* :class:`TwoViewFolder`: every image below an ImageFolder-style root (``ROOT/<dir>/.../*.png``;
  labels ignored), each returned as two spatially augmented uint8 views plus their parameters
  (``mast.augment.SpatialTwoView``). Unreadable or corrupt files are replaced by a neighbour and
  reported by index; :class:`BadImageBudget` counts them and stops the run when too many are bad.
* :class:`ResumableSampler`: the per-epoch seeded permutation of ``DistributedSampler``, that can
  start mid-epoch and hands every sample its own augmentation seed (derived from seed, epoch and
  image index), so a resumed run sees exactly the views an uninterrupted one would.
* :func:`load_labeled_split`: a labeled ``ROOT/<class>/*`` split as one uint8 tensor (kNN monitor).
"""
from __future__ import annotations

import os
import random
import stat
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_MAX_FALLBACKS = 16
_DEFAULT_MAX_PIXELS = 89478485  # PIL's Image.MAX_IMAGE_PIXELS


class DatasetError(ValueError):
    """A dataset path or layout the user can fix (one-line message)."""


class NoImagesError(DatasetError):
    """A folder without images in ``<dir>/`` subfolders (a pooled split may allow one such part)."""


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def is_regular_file(path: str | os.PathLike) -> bool:
    """True for a regular file (symlinks followed): a FIFO, socket or device named ``x.png`` is no
    image (reading a FIFO blocks forever); the rule of every image listing and of :func:`open_rgb`."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # a broken symlink, a file removed meanwhile
        return False


def _inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies below it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_folder(link: str, parent_real: str, seen: dict[str, str], what: str, root: Path) -> str:
    """Real path of the folder ``link`` (a child of ``parent_real``); DatasetError when following it
    would walk a folder twice: a symlink to a folder above it (a loop) or to one already listed."""
    real = os.path.realpath(link)
    if _inside(parent_real, real):
        raise DatasetError(f"{what}={root}: {link} is a symlink to {real}, a folder above it (a directory "
                           "loop: its images would be listed again under another class); remove it")
    if real in seen:
        raise DatasetError(f"{what}={root}: {link} and {seen[real]} are the same folder {real}; its images "
                           "would be listed twice (under two classes); remove one of them")
    return real


def list_images(root: str | Path, what: str = "data.root") -> list[Path]:
    """All image files below ``root/<dir>/`` (sorted): regular files with an image extension; one-line
    DatasetError on a wrong layout or a folder reached twice (a symlink loop, two links to one folder)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{what}={root}: no such directory")
    if not root.is_dir():
        raise DatasetError(f"{what}={root}: not a directory (expected an ImageFolder root)")
    top = sorted(os.scandir(root), key=lambda e: e.name)
    files: list[Path] = []
    root_real = os.path.realpath(root)
    seen: dict[str, str] = {}  # real path -> the path it was listed under
    for entry in top:
        if not entry.is_dir(follow_symlinks=True):
            continue
        seen[_check_folder(entry.path, root_real, seen, what, root)] = entry.path
        for dirpath, dirnames, names in os.walk(entry.path, followlinks=True):
            here = os.path.realpath(dirpath)
            dirnames.sort()
            for d in dirnames:
                seen[_check_folder(os.path.join(dirpath, d), here, seen, what, root)] = os.path.join(dirpath, d)
            files.extend(Path(dirpath, n) for n in sorted(names)
                         if _is_image(n) and is_regular_file(os.path.join(dirpath, n)))
    if not files:
        loose = sum(1 for e in top if e.is_file() and _is_image(e.name))
        if loose:
            raise NoImagesError(f"{what}={root}: {loose} images lie directly in the root; expected "
                               f"ImageFolder layout {root}/<class>/<image>")
        raise NoImagesError(f"{what}={root}: no images ({', '.join(IMG_EXTENSIONS[:3])}, ...) found; "
                           f"expected ImageFolder layout {root}/<class>/<image>")
    return files


def sample_seed(*keys: int) -> int:
    """A 32-bit seed derived from non-negative integer ``keys`` (e.g. stream, seed, epoch, index):
    augmentations then do not depend on world size, worker count or resume point."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def open_rgb(path: Path) -> Image.Image:
    """Open and fully decode an image as 8-bit RGB; DatasetError (naming ``path``) for anything that
    is not a regular file or would decode to more than :data:`MAX_PIXELS` (a decompression bomb);
    PIL's own errors for truncated/corrupt files.

    PIL's own conversion clips 16-bit and float images to 0..255 (a 16-bit PNG turns white, a
    [0, 1] float TIFF black); they are scaled to 8 bits here instead.
    """
    if not is_regular_file(path):
        raise DatasetError(f"{path}: not a regular file (a FIFO, device or folder named like an image)")
    try:
        with Image.open(path) as img:
            check_pixels(*img.size, what=str(path))
            img.load()
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                img = Image.fromarray(_to_uint8(np.asarray(img), img.mode))
            return img.convert("RGB")
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{path}: {e}") from None


def max_pixels() -> int:
    """The decompression-bomb bound: PIL's ``Image.MAX_IMAGE_PIXELS`` (about 89 M), or that default
    when a program has switched PIL's check off."""
    return Image.MAX_IMAGE_PIXELS or _DEFAULT_MAX_PIXELS


def check_pixels(width: int, height: int, what: str, resized_from: tuple[int, int] | None = None) -> None:
    """The one size rule of every image read here, before decoding and after resizing: at most
    :func:`max_pixels` pixels, so a tiny file cannot make a 9 GB array (a 1 x 3,000,000 PNG resized
    to a 32-pixel shorter side is 32 x 96,000,000)."""
    if width * height > max_pixels():
        how = f"resizing {resized_from[0]}x{resized_from[1]} gives" if resized_from else "it has"
        raise DatasetError(f"{what}: {how} {width}x{height} = {width * height} pixels, more than the "
                           f"decompression-bomb limit of {max_pixels()}; crop or drop the image")


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """16-bit integers -> /257; floats in [0, 1] -> x255; anything else is clipped to 0..255."""
    a = a.astype(np.float64)
    if mode == "F" and np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1:
        a = a * 255
    elif mode != "F" and a.max() > 255:
        a = a / 257
    return np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)


class TwoViewFolder(Dataset):
    """Two spatial views of each image below ``root``; items are
    ``(views uint8 [2,3,S,S], spatial [2,P_s], bad_index)`` with ``bad_index = -1`` when the
    requested image decoded, else its index (a readable neighbour was used in its place)."""

    def __init__(self, root: str | Path, transform: Callable, what: str = "data.root",
                 files: list[Path] | None = None) -> None:
        self.root = Path(root)
        self.files = files if files is not None else list_images(root, what)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> tuple[Image.Image, int]:
        for attempt in range(_MAX_FALLBACKS):
            try:
                return open_rgb(self.files[(index + attempt) % len(self.files)]), attempt
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                continue
        raise DatasetError(f"data.root={self.root}: {_MAX_FALLBACKS} consecutive unreadable images "
                           f"from {self.files[index]}")

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        img, fallbacks = self._load(index)
        if seed is None:
            views, spatial = self.transform(img)
        else:  # per-sample seed: the views do not depend on worker or resume point
            outer = random.getstate()
            try:
                with torch.random.fork_rng(devices=[]):
                    random.seed(seed)
                    torch.manual_seed(seed)
                    views, spatial = self.transform(img)
            finally:
                random.setstate(outer)
        return views, spatial, torch.tensor(index if fallbacks else -1)


class BadImageBudget:
    """Unreadable images of the current epoch (each replaced by a neighbour in :class:`TwoViewFolder`):
    the first ten are named, more than ``max_fraction`` of a rank's samples stop the run."""

    def __init__(self, dataset: TwoViewFolder, max_fraction: float, per_rank: int, seen: list[int] = ()) -> None:
        self.dataset, self.max_fraction, self.limit = dataset, max_fraction, max_fraction * per_rank
        self.seen: set[int] = set(seen)

    def count(self, bad: torch.Tensor) -> None:
        """Take a batch's ``bad_index`` column (-1 = the image decoded)."""
        for index in bad[bad >= 0].tolist():
            if index in self.seen:
                continue
            self.seen.add(index)
            path = self.dataset.files[index]
            if len(self.seen) <= 10:
                tqdm.write(f"warning: unreadable image skipped: {path} "
                           f"({len(self.seen)} this epoch, limit {int(self.limit)})")
            if len(self.seen) > self.limit:
                raise DatasetError(f"data.root={self.dataset.root}: more than {100 * self.max_fraction:.2g}% of the "
                                   f"images are unreadable ({len(self.seen)} so far, e.g. {path}); "
                                   "fix or remove them (data.max_bad_fraction)")


class ResumableSampler(Sampler):
    """Shard ``rank`` of a per-epoch permutation (seed + epoch), tail dropped so every rank gets
    the same count, yielding ``(index, sample_seed)``; ``set_epoch(e, start)`` skips the first
    ``start`` samples of the shard (resume mid-epoch)."""

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.n, self.num_replicas, self.rank, self.seed = n, num_replicas, rank, seed
        self.epoch, self.start = 0, 0
        self.per_rank = n // num_replicas

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.per_rank - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g)[: self.per_rank * self.num_replicas]
        shard = perm[self.rank::self.num_replicas].tolist()
        for index in shard[self.start:]:
            yield index, sample_seed(0, self.seed, self.epoch, index)


def center_square(img: Image.Image, size: int, resize: int | None = None) -> np.ndarray:
    """Resize the shorter side to ``resize`` (default ``size``; bicubic) and centre-crop a ``size``
    square: uint8 HWC.

    The one preprocessing of labeled images: the kNN monitor and the transfer probes both use it
    (the probes' paper-scale kNN with ``resize = size / 0.875``, as DINO's ``eval_knn.py``).
    """
    w, h = img.size
    resize = max(size, resize or size)
    scale = resize / min(w, h)
    if (w, h) != (size, size) or resize != size:
        new = (max(resize, round(w * scale)), max(resize, round(h * scale)))
        check_pixels(*new, what="image", resized_from=(w, h))
        img = img.resize(new, Image.BICUBIC)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def load_labeled_split(root: str | Path, size: int, max_images: int = 0, seed: int = 0,
                       classes: list[str] | None = None, what: str = "knn.root"
                       ) -> tuple[torch.Tensor, torch.Tensor, list[str], list[Path]]:
    """``ROOT/<class>/*`` -> (uint8 [N,3,S,S], labels [N], class names, files). ``max_images``
    keeps a seeded random subset; ``classes`` fixes the label order (test split uses train's)."""
    root = Path(root)
    files = list_images(root, what)
    names = classes if classes is not None else sorted({f.relative_to(root).parts[0] for f in files})
    lookup = {c: i for i, c in enumerate(names)}
    unknown = sorted({f.relative_to(root).parts[0] for f in files} - set(lookup))
    if unknown:
        raise DatasetError(f"{what}={root}: classes {unknown[:3]} are not in the train split")
    if max_images and len(files) > max_images:
        keep = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:max_images]
        files = [files[i] for i in sorted(keep.tolist())]
    images, labels, kept = [], [], []
    for f in files:
        try:
            images.append(center_square(open_rgb(f), size))
        except (OSError, ValueError, SyntaxError):
            continue  # the monitor only reports; a bad labeled image is left out
        labels.append(lookup[f.relative_to(root).parts[0]])
        kept.append(f)
    if not images:
        raise DatasetError(f"{what}={root}: no readable images")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels), list(names), kept
