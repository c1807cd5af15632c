"""Frozen-backbone features for the probes (few-shot, linear, kNN), cached on disk.

Images come from an ImageFolder-style split (``DATA/<split>/<class>/<image>``; ``a+b`` pools
splits by class name), go through Resize(bicubic) + CenterCrop at the pretraining resolution and
ImageNet normalisation, and then through the checkpoint's ResNet (``fc = Identity``, eval mode,
no grad, channels_last, batched). The output is the un-normalised pooled feature, as in AugSelf.

Cache: one file per (checkpoint sha256, backbone arch, dataset path + split + every image's
relative path/size/mtime, transform) under ``--cache-dir`` (default ``.cache/features``), written
atomically. Any change of the checkpoint's bytes or of the image files gives another key, so a
stale entry is never read. The network is built only on a cache miss.

This module also holds the small CLI frame the three probes share (:func:`add_common_args`,
:func:`run_task`): arguments, the result record, exit codes (contract "Task CLI").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml
from PIL import Image
from torch import Tensor, nn
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS

from mast.atomic import torch_save_atomic

from transfer.checkpoints import (CheckpointError, CheckpointInfo, add_backbone_arg, build_resnet, load_backbone,
                                  weights_id)

__all__ = ["FeatureError", "SplitFeatures", "FeatureExtractor", "list_samples", "image_transform",
           "pretrain_resolution", "add_common_args", "run_task", "dataset_name"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_FORMAT = 1  # bump when the stored content or the feature definition changes
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
    samples = [
        (path, index[cls.name])
        for folder in folders
        for cls in sorted(d for d in folder.iterdir() if d.is_dir())
        for path in sorted(cls.iterdir())
        if path.suffix.lower() in IMG_EXTENSIONS and path.is_file()
    ]
    if not samples:
        where = " + ".join(str(f) for f in folders)
        raise FeatureError(f"dataset split {where} is empty: no images in <class>/ folders ({len(classes)} class folders)")
    return samples, classes


def image_transform(size: int) -> T.Compose:
    """Resize (bicubic, shorter side) + CenterCrop at ``size`` px, ImageNet normalisation."""
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _transform_id(size: int) -> str:
    return f"resize{size}-bicubic/centercrop{size}/imagenet-norm/fc-identity-avgpool/v{CACHE_FORMAT}"


def pretrain_resolution(info: CheckpointInfo) -> int | None:
    """The crop size the checkpoint was pretrained at, from its run's ``config.yaml`` (``augment.size``)."""
    if not info.run_dir:
        return None
    try:
        config = yaml.safe_load((Path(info.run_dir) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    size = (config or {}).get("augment", {}).get("size") if isinstance(config, dict) else None
    return int(size) if isinstance(size, int) and size > 0 else None


class _ImageList(torch.utils.data.Dataset):
    def __init__(self, samples: list[tuple[Path, int]], transform: Callable) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Tensor:
        path = self.samples[i][0]
        try:
            with Image.open(path) as img:
                return self.transform(img.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for truncated/corrupt files
            raise FeatureError(f"image {path} cannot be read as an image ({type(e).__name__}: {str(e)[:120]})") from None


class FeatureExtractor:
    """Features of one checkpoint on any dataset split, through the on-disk cache.

    ``image_size=None`` means the pretraining resolution (from the run config), else 224.
    ``model`` stays ``None`` until a cache miss needs the network.
    """

    def __init__(self, ckpt: str | Path, image_size: int | None = None, cache_dir: str | Path = ".cache/features",
                 batch_size: int = 128, num_workers: int = 0, device: str = "auto", progress: bool = True,
                 backbone: str | None = None) -> None:
        self.state, self.info = load_backbone(ckpt, backbone)
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
        head = {"ckpt_sha256": weights_id(self.info), "arch": self.info.arch, "root": str(root.resolve()),
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
        labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        _write_cache(path, {"key": key, "features": feats, "labels": labels, "classes": classes,
                            "ckpt_sha256": self.info.sha256, "root": str(root.resolve()), "split": split,
                            "image_size": self.image_size})
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
        loader = torch.utils.data.DataLoader(_ImageList(samples, image_transform(self.image_size)),
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


def _write_cache(path: Path, entry: dict) -> None:
    torch_save_atomic(path, entry)


# ---------------------------------------------------------------- the probes' shared CLI frame


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="backbone checkpoint (any format transfer.checkpoints reads)")
    parser.add_argument("--data", required=True, help="dataset root holding <split>/<class>/<image> folders")
    parser.add_argument("--out", required=True, help="output directory for record.json and config.yaml")
    parser.add_argument("--scale", choices=["demo", "paper"], default="demo")
    parser.add_argument("--dataset", default=None, help="dataset name in the record (default: from --data)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="Resize+CenterCrop size (default: the checkpoint's pretraining resolution, else 224)")
    parser.add_argument("--cache-dir", default=".cache/features")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the probes' solvers are many small ops, and on a "
                             "shared CPU one thread per process measured 2-30x faster than two)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--force", action="store_true", help="replace an existing record.json in --out")
    add_backbone_arg(parser)


def dataset_name(data: str | Path) -> str:
    """``synthetic/<task>`` for a task of the synthetic benchmark (ROOT/classification/<task>), else the folder name."""
    data = Path(data).resolve()
    return f"synthetic/{data.name}" if (data.parent.parent / "card.json").is_file() else data.name


def run_task(task: str, args: argparse.Namespace, body: Callable, seeds: list[int] | None = None) -> int:
    """Run ``body(run, extractor)`` inside a :class:`transfer.records.TaskRun`; return the exit code.

    A missing ``--data`` folder is ``skipped`` (exit 3); an unreadable checkpoint or dataset, or
    any error in ``body``, is ``failed`` (exit 1) with a one-line error; an existing record is a
    usage error (exit 2) unless ``--force``.
    """
    from transfer.records import EXIT_USAGE

    if args.image_size is not None and args.image_size < 1:
        print(f"{task}: --image-size must be a positive number of pixels, got {args.image_size}", file=sys.stderr)
        return EXIT_USAGE
    if args.threads < 1:
        print(f"{task}: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return EXIT_USAGE
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run_task(task, args, body, seeds)
    finally:
        torch.set_num_threads(previous_threads)  # callers in the same process (tests) keep their setting


def _run_task(task: str, args: argparse.Namespace, body: Callable, seeds: list[int] | None) -> int:
    from transfer.records import EXIT_USAGE, TaskRun, TaskSkipped

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    extractor, load_error = None, None
    if Path(args.data).is_dir():
        try:
            extractor = FeatureExtractor(args.ckpt, args.image_size, args.cache_dir, args.batch_size,
                                         args.num_workers, args.device, not args.no_progress, args.backbone)
            config["image_size"] = extractor.image_size
        except (CheckpointError, FeatureError, OSError) as e:
            load_error = e
    try:
        run = TaskRun(task=task, dataset=args.dataset or dataset_name(args.data), scale=args.scale,
                      out_dir=args.out, ckpt_info=extractor.info if extractor else None, config=config,
                      seeds=seeds, force=args.force)
    except FileExistsError as e:
        print(f"{task}: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with run:
            if not Path(args.data).is_dir():
                raise TaskSkipped(f"dataset folder {args.data} not found (expected <split>/<class>/<image> folders)")
            if load_error is not None:
                raise load_error
            body(run, extractor)
    except Exception:  # noqa: BLE001 - TaskRun recorded it; the CLI reports one line and an exit code
        print(f"{task}: {run.record['status']}: {run.record['error']}", file=sys.stderr)
    return run.exit_code
