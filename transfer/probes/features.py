"""Frozen-backbone features for the probes (few-shot, linear, kNN), cached on disk.

Images come from an ImageFolder-style split (``DATA/<split>/<class>/<image>``; ``a+b`` pools
splits by class name), are read and cropped as the pretraining kNN monitor reads them (shorter side
resized, bicubic, then the centre square at the pretraining resolution:
:func:`mast.data.folder.center_square`), ImageNet-normalised, and then go through the
checkpoint's ResNet (``fc = Identity``, eval mode, no grad, channels_last, batched). The output
is the un-normalised pooled feature, as in AugSelf.

Cache: one file per (checkpoint sha256, backbone arch, dataset path + split + every image's
relative path/size/mtime, transform) under ``--cache-dir`` (default ``.cache/features``), written
atomically. Any change of the checkpoint's bytes or of the image files gives another key, so a
stale entry is never read. The network is built only on a cache miss.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
import torch
import yaml
from torch import Tensor, nn

from mast import rundir
from mast.atomic import torch_save_atomic
from mast.data.folder import DatasetError, center_square, list_images, open_rgb

from transfer.checkpoints import CheckpointInfo, build_resnet, load_backbone

__all__ = ["FeatureError", "SplitFeatures", "FeatureExtractor", "list_samples", "pretrain_resolution"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_FORMAT = 2  # bump when the stored content or the feature definition changes
DEFAULT_RESOLUTION = 224  # ImageNet models; used when the checkpoint's run config gives none


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


def list_samples(root: str | Path, split: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """(image path, class index) for ``root/<split>/<class>/*``; ``split`` may be ``a+b`` (pooled).

    Classes are the sorted union of the class folders of the pooled splits.
    """
    root = Path(root)
    folders = [root / s for s in split.split("+")]
    for folder in folders:
        if not folder.is_dir():
            raise FeatureError(f"dataset split {folder} does not exist (expected {root}/<split>/<class>/<image>)")
    classes = sorted({d.name for f in folders for d in f.iterdir() if d.is_dir()})
    index = {c: i for i, c in enumerate(classes)}
    samples = [(path, index[path.relative_to(f).parts[0]]) for f in folders for path in _images(f)]
    if not samples:
        where = " + ".join(str(f) for f in folders)
        raise FeatureError(f"dataset split {where} is empty: no images in <class>/ folders ({len(classes)} class folders)")
    return samples, classes


def _images(folder: Path) -> list[Path]:
    try:
        return list_images(folder, what="--data")
    except DatasetError:  # an empty split of a pooled pair; all of them empty is refused above
        return []


def _transform_id(size: int) -> str:
    return f"square{size}-bicubic/imagenet-norm/fc-identity-avgpool/v{CACHE_FORMAT}"


def pretrain_resolution(info: CheckpointInfo) -> int | None:
    """The crop size the checkpoint was pretrained at, from its run's ``config.yaml`` (``augment.size``)."""
    if not info.run_dir:
        return None
    try:
        config = yaml.safe_load((Path(info.run_dir) / rundir.CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return None
    size = (config or {}).get("augment", {}).get("size") if isinstance(config, dict) else None
    return int(size) if isinstance(size, int) and size > 0 else None


class _ImageList(torch.utils.data.Dataset):
    """Images as the kNN monitor sees them (:func:`mast.data.folder.center_square`), ImageNet-normalised."""

    def __init__(self, samples: list[tuple[Path, int]], size: int) -> None:
        self.samples, self.size = samples, size
        self.mean, self.std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Tensor:
        path = self.samples[i][0]
        try:
            pixels = center_square(open_rgb(path), self.size)
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for truncated/corrupt files
            raise FeatureError(f"image {path} cannot be read as an image ({type(e).__name__}: {str(e)[:120]})") from None
        return (torch.tensor(pixels).permute(2, 0, 1).float() / 255 - self.mean) / self.std


class FeatureExtractor:
    """Features of one checkpoint on any dataset split, through the on-disk cache.

    ``image_size=None`` means the pretraining resolution (from the run config), else 224.
    ``model`` stays ``None`` until a cache miss needs the network.
    """

    def __init__(self, ckpt: str | Path, image_size: int | None = None, cache_dir: str | Path = ".cache/features",
                 batch_size: int = 128, num_workers: int = 0, device: str = "auto", progress: bool = True) -> None:
        self.state, self.info = load_backbone(ckpt)
        self.image_size = image_size or pretrain_resolution(self.info) or DEFAULT_RESOLUTION
        if image_size is None and pretrain_resolution(self.info) is None:
            print(f"features: no pretraining resolution found for {ckpt}; using {self.image_size} px "
                  "(pass --image-size to choose)", file=sys.stderr)
        self.cache_dir = Path(cache_dir)
        self.batch_size, self.num_workers, self.progress = batch_size, num_workers, progress
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.model: nn.Module | None = None

    def cache_key(self, root: Path, split: str, samples: list[tuple[Path, int]]) -> str:
        h = hashlib.sha256()
        head = {"ckpt_sha256": self.info.sha256, "arch": self.info.arch, "root": str(root.resolve()),
                "split": split, "transform": _transform_id(self.image_size)}
        h.update(json.dumps(head, sort_keys=True).encode())
        for path, label in samples:
            st = path.stat()
            h.update(f"{path.relative_to(root)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def features(self, root: str | Path, split: str) -> SplitFeatures:
        """Features of ``root/<split>``: read from the cache when the key matches, else computed and stored."""
        root = Path(root)
        samples, classes = list_samples(root, split)
        key = self.cache_key(root, split, samples)
        path = self.cache_dir / f"{key}.pt"
        cached = _read_cache(path, key, len(samples))
        if cached is not None:
            return SplitFeatures(cached["features"], cached["labels"], list(cached["classes"]), True, path)
        feats = self._embed(samples, desc=f"features {root.name}/{split}")
        bad = int((~torch.isfinite(feats)).any(dim=1).sum())
        if bad:  # a probe on NaN features would report chance level as a result
            raise FeatureError(f"{root}/{split}: {bad} of {len(samples)} images give NaN/Inf features "
                               f"with {self.info.path}; the checkpoint's weights or statistics are not finite?")
        labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        try:
            torch_save_atomic(path, {"key": key, "features": feats, "labels": labels, "classes": classes,
                                     "ckpt_sha256": self.info.sha256, "root": str(root.resolve()), "split": split,
                                     "image_size": self.image_size})
        except OSError as e:  # a cache that cannot be written only costs time next run
            print(f"features: cache not written, continuing without it ({' '.join(str(e).split())})", file=sys.stderr)
            path = None
        return SplitFeatures(feats, labels, classes, False, path)

    def _network(self) -> nn.Module:
        if self.model is None:
            model = build_resnet(self.info.arch)
            model.load_state_dict(self.state, strict=True)
            self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        return self.model

    @torch.no_grad()
    def _embed(self, samples: list[tuple[Path, int]], desc: str) -> Tensor:
        from tqdm import tqdm

        model = self._network()
        loader = torch.utils.data.DataLoader(_ImageList(samples, self.image_size),
                                             batch_size=self.batch_size, num_workers=self.num_workers)
        out = []
        with tqdm(total=len(samples), desc=desc, unit="img", disable=not self.progress, file=sys.stderr) as bar:
            for batch in _safe_iter(loader):
                batch = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                out.append(model(batch).float().cpu())
                bar.update(len(batch))
        return torch.cat(out)


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
