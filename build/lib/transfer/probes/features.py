"""Frozen-backbone features for the probes (few-shot, linear, kNN), cached on disk.

Images come from a registry dataset in its download layout (:mod:`transfer.probes.datasets`) or
an ImageFolder-style split (``DATA/<split>/<class>/<image>``; ``a+b`` pools splits by class
name), are read and cropped as the pretraining kNN monitor reads them (shorter side resized to
``resize``, bicubic, then the centre ``size`` square: :func:`mast.data.folder.center_square`),
normalised (:class:`Preprocess`: ImageNet's or STL-10's statistics, or the user's), and then go
through the checkpoint's ResNet (``fc = Identity``, eval mode, no grad, channels_last, batched).
The output is the un-normalised pooled feature, as in AugSelf. A ViT checkpoint
(:mod:`transfer.backbones.vit`) goes through timm's ViT instead, at the resolution asked (position
embedding resampled), and gives the tokens its codebase evaluates (``vit_pool``:
:func:`transfer.backbones.vit.pooling.vit_features`; default :data:`transfer.backbones.vit.load.DEFAULT_POOL`).

Preprocessing defaults come from the checkpoint's pretraining run (``config.yaml``:
``augment.size``, ``augment.mean``/``std``); a checkpoint from elsewhere has none, so at
``--scale paper`` it needs ``--image-size`` (an error otherwise), and at demo scale gets 224 px
with a warning. The record stores what was used.

Cache: one file per (checkpoint sha256 and, in a file with several, the chosen backbone; arch, dataset path + split + every image's
relative path/size/mtime, transform) under ``--cache-dir`` (default :func:`default_cache_dir`), written
atomically. Any change of the checkpoint's bytes or of the image files gives another key, so a
stale entry is never read. The network is built only on a cache miss. A ViT's key includes its pooling
(``vit_pool``, ``vit_last_blocks``); one pass stores every pooling the probes ask for, each under its own
key (:func:`transfer.backbones.vit.pooling.probe_feature_sets`), so kNN, linear and few-shot share one pass per image.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
import torch
import yaml
from PIL import Image
from torch import Tensor, nn

from mast import rundir
from plumbing.atomic import torch_save_atomic
from mast.data.folder import DatasetError, center_square, open_rgb

from transfer.backbones import load
from transfer.backbones.info import CheckpointInfo, weights_id

__all__ = ["FeatureError", "SplitFeatures", "FeatureExtractor", "Preprocess", "pretrain_resolution",
           "parse_normalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD),
                  "stl10": ((0.43, 0.42, 0.39), (0.27, 0.26, 0.27))}  # AugSelf's STL-10 statistics
CACHE_FORMAT = 3  # bump when the stored content or the feature definition changes
DEFAULT_RESOLUTION = 224  # ImageNet models; used when the checkpoint's run config gives none
CIFAR_RESOLUTION = 32  # a CIFAR-stem ResNet (3x3 stride-1 conv1, no max-pool) is trained on 32 px images


class FeatureError(ValueError):
    """A dataset the probes cannot read (missing or empty split, unreadable image): one line."""


@dataclass
class SplitFeatures:
    """Features [N, D] (float32), labels [N] (int64) indexing ``classes``, and where they came from."""

    features: Tensor
    labels: Tensor
    classes: list[str]
    from_cache: bool
    cache_path: Path | None


@dataclass(frozen=True)
class Preprocess:
    """Shorter side -> ``resize`` (bicubic), centre ``size`` crop, (x/255 - mean) / std."""

    size: int
    resize: int
    normalize: str
    mean: tuple
    std: tuple

    def describe(self) -> dict:
        """What the record stores."""
        return {"resize": self.resize, "crop": self.size, "interpolation": "bicubic", "normalize": self.normalize,
                "mean": list(self.mean), "std": list(self.std)}

    def transform_id(self) -> str:
        return (f"resize{self.resize}-crop{self.size}-bicubic/norm{list(self.mean)}{list(self.std)}"
                f"/fc-identity-avgpool/v{CACHE_FORMAT}")


def parse_normalize(value: str) -> tuple[str, tuple, tuple]:
    """``imagenet`` | ``stl10`` | ``M1,M2,M3/S1,S2,S3`` -> (name, mean, std); ValueError naming the option."""
    if value in NORMALIZATIONS:
        return (value, *NORMALIZATIONS[value])
    try:
        mean, std = (tuple(float(x) for x in half.split(",")) for half in value.split("/"))
    except ValueError:
        mean, std = (), ()
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"--normalize {value!r}: expected one of {sorted(NORMALIZATIONS)} or MEAN/STD as "
                         "three comma-separated numbers each (e.g. 0.43,0.42,0.39/0.27,0.26,0.27)")
    return value, mean, std


def _run_config(info: CheckpointInfo) -> dict:
    if not info.run_dir:
        return {}
    try:
        config = yaml.safe_load((Path(info.run_dir) / rundir.CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(config, dict):
        return {}
    # a section of another shape (``augment: [..]``) says nothing about the resolution: ignored
    return {k: v for k, v in config.items() if not (k == "augment" and not isinstance(v, dict))}


def pretrain_resolution(info: CheckpointInfo) -> int | None:
    """The crop size the checkpoint was pretrained at: its run's ``config.yaml`` (``augment.size``),
    else 32 px for a CIFAR-stem ResNet (the stem itself says so)."""
    return _resolution_and_source(info)[0]


def _resolution_and_source(info: CheckpointInfo) -> tuple[int | None, str | None]:
    size = (_run_config(info).get("augment") or {}).get("size")
    if isinstance(size, int) and size > 0:
        return int(size), "the run's config.yaml (augment.size)"
    if info.stem == "cifar":
        return CIFAR_RESOLUTION, "the checkpoint's CIFAR stem (3x3 stride-1 conv1, no max-pool: 32 px images)"
    return None, None


def _pretrain_normalization(info: CheckpointInfo) -> tuple[tuple, tuple] | None:
    augment = _run_config(info).get("augment") or {}
    mean, std = augment.get("mean"), augment.get("std")
    ok = all(isinstance(v, (list, tuple)) and len(v) == 3 for v in (mean, std))
    return (tuple(map(float, mean)), tuple(map(float, std))) if ok else None


class _ImageList(torch.utils.data.Dataset):
    """Images as the kNN monitor sees them (:func:`mast.data.folder.center_square`), normalised."""

    def __init__(self, items, pre: Preprocess) -> None:
        self.items, self.pre = items, pre
        self.mean, self.std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Tensor:
        if self.items.array is not None:
            img, where = Image.fromarray(self.items.array[i]), f"item {i}"
        else:
            where = self.items.paths[i]
        try:
            img = open_rgb(where) if self.items.array is None else img
            pixels = center_square(img, self.pre.size, self.pre.resize)
        except DatasetError as e:  # not a regular file, too many pixels
            raise FeatureError(f"image {where}: {str(e).removeprefix(f'{where}: ')}") from None
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for truncated/corrupt files
            raise FeatureError(f"image {where} cannot be read as an image ({type(e).__name__}: {str(e)[:120]})") from None
        return (torch.tensor(pixels).permute(2, 0, 1).float() / 255 - self.mean) / self.std


def default_cache_dir() -> Path:
    """The user's cache folder for features: ``$XDG_CACHE_HOME/mast/features``, else ``~/.cache/mast/features``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mast" / "features"


class FeatureExtractor:
    """Features of one checkpoint on any dataset split, through the on-disk cache.

    ``image_size=None`` means the pretraining resolution (from the run config), else 224 — or,
    with ``require_size`` (paper scale), a :class:`FeatureError` naming ``--image-size``.
    ``normalize=None``: the run config's mean/std, else ImageNet's. ``crop_fraction`` < 1 resizes
    the shorter side to ``size / crop_fraction`` before the centre crop (kNN, DINO: 0.875).
    ``dataset`` names a registry entry (:mod:`transfer.probes.datasets`; None: ImageFolder).
    ``model`` stays ``None`` until a cache miss needs the network. ``vit_pool``/``vit_last_blocks``
    (a ViT only; None: its codebase's own choice, for the linear probe with ``linear``).
    """

    def __init__(self, ckpt: str | Path, image_size: int | None = None, cache_dir: str | Path | None = None,
                 batch_size: int = 128, num_workers: int = 0, device: str = "auto", progress: bool = True,
                 backbone: str | None = None, normalize: str | None = None, crop_fraction: float = 1.0, require_size: bool = False,
                 dataset: str | None = None, split_file: str | None = None, fewshot: bool = False,
                 carve_val: bool = False, vit_pool: str | None = None, vit_last_blocks: int | None = None,
                 linear: bool = False, stem_padding: int | None = None) -> None:
        self.state, self.info = load(ckpt, backbone, stem_padding)
        self.vit = self.info.family == "vit"  # each family's code is imported where its branch needs it
        if not self.vit:
            from transfer.backbones.resnet.load import require_stem_padding

            require_stem_padding(self.info)  # before any work: a CIFAR stem's padding is never guessed
        self.vit_pool = self.vit_last_blocks = None
        if self.vit:
            from transfer.backbones.vit.pooling import linear_default

            pool, blocks = linear_default(self.info) if linear else (self.info.default_pool, 1)
            self.vit_pool, self.vit_last_blocks = vit_pool or pool, vit_last_blocks or blocks
        recorded, source = _resolution_and_source(self.info)
        if recorded is None and self.vit:
            recorded, source = self.info.vit["img_size"], "the ViT's position embeddings (its training resolution)"
        if image_size is None and recorded is None:
            if require_size:
                raise FeatureError(f"checkpoint {ckpt} has no recorded pretraining resolution (no run config.yaml "
                                   "beside it); pass --image-size N --normalize NAME (e.g. 224 imagenet; 96 stl10 for "
                                   "STL-10 models), in run_all --var image_size=N --var normalize=NAME")
            print(f"features: no pretraining resolution found for {ckpt}; using {DEFAULT_RESOLUTION} px "
                  "(pass --image-size to choose)", file=sys.stderr)
        self.image_size = image_size or recorded or DEFAULT_RESOLUTION
        if self.vit and self.image_size % self.info.vit["patch_size"]:
            raise FeatureError(f"--image-size {self.image_size} is not a multiple of the ViT's patch size "
                               f"{self.info.vit['patch_size']} ({ckpt})")
        self.image_size_source = ("--image-size" if image_size else source) or f"default ({DEFAULT_RESOLUTION} px)"
        if normalize is not None:
            name, mean, std = parse_normalize(normalize)
        else:
            stats = _pretrain_normalization(self.info)
            name, (mean, std) = ("run-config", stats) if stats else ("imagenet", NORMALIZATIONS["imagenet"])
        self.preprocess = Preprocess(self.image_size, int(round(self.image_size / crop_fraction)), name, mean, std)
        self.dataset, self.split_file, self.fewshot, self.carve_val = dataset, split_file, fewshot, carve_val
        self.splits: dict[str, dict] = {}  # split -> how it was made and its size (recorded)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.batch_size, self.num_workers, self.progress = batch_size, num_workers, progress
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.model: nn.Module | None = None
        self._items: dict[tuple[str, str], object] = {}

    def cache_key(self, root: Path, split: str, items, vit_set: tuple[str, int] | None = None) -> str:
        """The entry's name: ``vit_set`` ``(pool, last blocks)`` names another feature of a ViT (default: the one asked for)."""
        head = {"ckpt_sha256": weights_id(self.info), "arch": self.info.arch, "root": str(root.resolve()),
                **({"stem": self.info.stem, "stem_padding": self.info.stem_padding} if self.info.stem != "imagenet" else {}),
                "dataset": self.dataset, "split": split, "split_info": items.info, "transform": self.preprocess.transform_id(),
                "items": items.fingerprint()}
        if self.vit:  # a ViT's feature depends on the pooling too (ResNet keys stay as they were)
            pool, blocks = vit_set or (self.vit_pool, self.vit_last_blocks)
            head["vit"] = {"pool": pool, "last_blocks": blocks, "size": self.image_size}
        return hashlib.sha256(json.dumps(head, sort_keys=True).encode()).hexdigest()

    def items(self, root: str | Path, split: str):
        """The images and labels of ``split`` of ``root`` (:class:`transfer.probes.readers.Items`), read once."""
        from transfer.probes.datasets import LayoutError, load_split

        key = (str(root), split)
        if key not in self._items:
            try:
                self._items[key] = load_split(Path(root), split, self.dataset, self.split_file, self.fewshot,
                                              self.carve_val)
            except LayoutError as e:
                raise FeatureError(str(e)) from None
        return self._items[key]

    def features(self, root: str | Path, split: str) -> SplitFeatures:
        """Features of ``split`` of ``root``: read from the cache when the key matches, else computed and stored.

        A ViT's pass computes every feature set of :func:`transfer.backbones.vit.pooling.probe_feature_sets` and stores
        each under its own key, so that another probe task asking for another pooling of the same
        images reads it instead of running the network again.
        """
        root = Path(root)
        items = self.items(root, split)
        self.splits[split] = {**items.info, "n": len(items), "classes": len(items.classes)}
        key = self.cache_key(root, split, items)
        path = self.cache_dir / f"{key}.pt"
        cached = _read_cache(path, key, len(items))
        if cached is not None:
            return SplitFeatures(cached["features"], cached["labels"], list(cached["classes"]), True, path)
        sets = self._embed(items, desc=f"features {root.name}/{split}")
        feats = sets.pop(self._asked())
        bad = int((~torch.isfinite(feats)).any(dim=1).sum())
        if bad:  # a probe on NaN features would report chance level as a result
            raise FeatureError(f"{root}/{split}: {bad} of {len(items)} images give NaN/Inf features "
                               f"with {self.info.path}; the checkpoint's weights or statistics are not finite?")
        labels = torch.tensor(items.labels, dtype=torch.long)
        entry = {"labels": labels, "classes": items.classes, "ckpt_sha256": self.info.sha256,
                 "root": str(root.resolve()), "split": split, "image_size": self.image_size}
        if not self._store(path, {"key": key, "features": feats, **entry}):
            path = None
        for vit_set, other in sets.items():  # the other poolings of this pass, for the next task's lookup
            other_key = self.cache_key(root, split, items, vit_set)
            other_path = self.cache_dir / f"{other_key}.pt"
            if bool(torch.isfinite(other).all()) and not other_path.exists():
                self._store(other_path, {"key": other_key, "features": other, **entry})
        return SplitFeatures(feats, labels, items.classes, False, path)

    def _asked(self) -> tuple[str, int] | None:
        """The feature set this extractor was asked for: ``(pool, last blocks)`` for a ViT, None for a ResNet."""
        return (self.vit_pool, self.vit_last_blocks) if self.vit else None

    @staticmethod
    def _store(path: Path, entry: dict) -> bool:
        try:
            torch_save_atomic(path, entry)
            return True
        except OSError as e:  # a cache that cannot be written only costs time next run
            print(f"features: cache not written, continuing without it ({' '.join(str(e).split())})", file=sys.stderr)
            return False

    def _network(self) -> nn.Module:
        if self.model is None and self.vit:
            from transfer.backbones.vit.pooling import VitFeatures, probe_feature_sets

            sets = probe_feature_sets(self.info, self.vit_pool, self.vit_last_blocks)
            self.model = VitFeatures.from_state(self.state, self.info, self.image_size, sets).eval().to(self.device)
        if self.model is None:
            from transfer.backbones.resnet.load import build_resnet

            model = build_resnet(self.info.arch, self.info.stem, self.info.stem_padding)
            model.load_state_dict(self.state, strict=True)
            self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        return self.model

    @torch.no_grad()
    def _embed(self, items, desc: str) -> dict:
        """Features of every image: ``{feature set: [N, D]}`` (a ResNet's one set is ``None``)."""
        from tqdm import tqdm

        model = self._network()
        samples = _ImageList(items, self.preprocess)
        loader = torch.utils.data.DataLoader(samples,
                                             batch_size=self.batch_size, num_workers=self.num_workers)
        out: dict = {}
        with tqdm(total=len(samples), desc=desc, unit="img", disable=not self.progress, file=sys.stderr) as bar:
            for batch in _safe_iter(loader):
                batch = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                got = model(batch)
                for vit_set, feats in (got.items() if isinstance(got, dict) else [(None, got)]):
                    out.setdefault(vit_set, []).append(feats.float().cpu())
                bar.update(len(batch))
        return {vit_set: torch.cat(parts) for vit_set, parts in out.items()}


def _safe_iter(loader: torch.utils.data.DataLoader):
    """Iterate, turning a worker-wrapped FeatureError back into a one-line FeatureError."""
    it = iter(loader)
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except FeatureError:
            raise
        except Exception as e:  # noqa: BLE001 - DataLoader workers re-raise with a traceback text
            line = next((ln for ln in str(e).splitlines() if "FeatureError" in ln or "cannot be read" in ln), None)
            if line is None:
                raise
            raise FeatureError(line.split("FeatureError: ")[-1].strip()) from None


def _read_cache(path: Path, key: str, n: int) -> dict | None:
    """The cached entry at ``path`` if it is complete and was made for ``key``; else None."""
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged cache entry is recomputed, never fatal
        print(f"features: ignoring unreadable cache entry {path} ({type(e).__name__})", file=sys.stderr)
        return None
    ok = isinstance(entry, dict) and entry.get("key") == key and len(entry.get("labels", ())) == n
    return entry if ok else None
