"""What a checkpoint holds, for every backbone family: :class:`CheckpointInfo`, the errors, and what the
file says about its run (method, seed, provenance).

``CheckpointInfo.family`` ("resnet" or "vit") is set by the loader that read the file
(:func:`transfer.backbones.load`); every task branches on it. A ViT's own fields (``vit``: its spec,
``unused``, ``default_pool``) stay empty for a ResNet; a ResNet's (``stem``...) keep their defaults for a ViT.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from mast import rundir
from plumbing.provenance import file_sha256
from transfer.backbones.candidates import Candidate
from transfer.backbones.read import INDEX_SUFFIX, FileReadError, read_file
from transfer.hub import HubError, is_reference, resolve, shard_files

FAMILIES = ("resnet", "vit")


class CheckpointError(ValueError):
    """A checkpoint that cannot be mapped onto a supported backbone (one-line message)."""


class ConversionError(ValueError):
    """A state_dict that cannot be converted completely for an engine (one-line message)."""


class BackboneMismatch(ValueError):
    """The checkpoint and an engine config's backbone do not describe the same network (one line)."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    sha256: str
    arch: str
    method: str | None
    source_format: str  # the chosen backbone's key prefix, e.g. "state_dict.module.encoder_q" ("torchvision": none)
    run_dir: str | None
    family: str  # "resnet" or "vit" (FAMILIES): which tasks and conversions take it
    backbone: str = ""  # the chosen candidate's flattened key prefix ("" for a plain state_dict)
    backbone_choice: str = "the only candidate"  # how it was chosen (--backbone, the only one, a convention)
    candidates: tuple[str, ...] = ()  # every candidate backbone found (identical copies merged)
    layout: str = "torchvision"  # names: "torchvision", lightly's "sequential", a ViT's "timm" or "mmpretrain"
    codebase: str | None = None  # best guess of the writer, for people reading the record
    pretrain_seed: int | None = None  # the pretraining run's ``seed``, when its config says (pairs seeds in reports)
    stem: str = "imagenet"  # ResNet: "imagenet" (7x7 stride-2 conv1 + max-pool) or "cifar" (3x3 stride-1, no max-pool)
    stem_padding: int | None = None  # the CIFAR stem's conv1 padding (not in the tensors; None: unknown)
    stem_padding_source: str = ""  # where it was found (--stem-padding, solo-learn's saved config, ...)
    reference: str = ""  # the hub reference --ckpt gave (transfer.hub), "" for a local file
    resolved: str = ""  # that reference pinned to what it resolved to (hf://ORG/REPO@<commit>/FILE, the URL)
    revision: str = ""  # the hub commit, or the library version whose enum/cfg named the URL
    vit: dict = field(default_factory=dict)      # ViT: asdict(VitSpec) (width, depth, patch, registers...)
    unused: dict = field(default_factory=dict)   # ViT: tensor group -> why the tasks do not use it
    default_pool: str = ""                       # ViT: the codebase's probe pooling (cls, avg, cls+avg)


@dataclass(frozen=True)
class Located:
    """A checkpoint file read once, with its candidates and the one chosen (``chosen`` None: refused, ``error`` says why)."""

    path: Path                      # the local file (a hub reference resolved)
    provenance: dict[str, str]      # CheckpointInfo's reference/resolved/revision for a hub file
    obj: Any                        # what the file holds
    sha256: str
    flat: dict[str, Tensor]         # every tensor under its dotted key path
    found: dict[str, list[Candidate]]  # family -> its candidates
    family: str | None = None
    chosen: Candidate | None = None
    how: str = ""
    error: str = ""

    @property
    def candidates(self) -> list[Candidate]:
        """The chosen family's candidates (every family's when none was chosen)."""
        return self.found[self.family] if self.family else [c for cs in self.found.values() for c in cs]

    @property
    def where(self) -> str:
        """The file as error messages name it (with the candidate when there were several)."""
        return f"{self.path} [{self.chosen.name}]" if self.chosen and len(self.candidates) > 1 else str(self.path)


def weights_id(info: CheckpointInfo) -> str:
    """Cache key of the weights a task uses: the file's sha256, plus the chosen backbone when the
    file holds several (two choices from one file must never share converted weights or features)."""
    return info.sha256 if len(info.candidates) <= 1 else f"{info.sha256}@{info.backbone}"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The file's sha256; for a sharded checkpoint's ``*.index.json``, the sha256 of the index's and each
    shard's sha256 in the index's order (a changed shard changes it, as a changed file does).
    :func:`read_checkpoint` computes the same from the bytes it reads (no second read)."""
    path = Path(path)
    if path.name.endswith(INDEX_SUFFIX):
        parts = [path] + [path.parent / name for name in shard_files(path)]
        return hashlib.sha256("\n".join(file_sha256(p, chunk) for p in parts).encode()).hexdigest()
    return file_sha256(path, chunk)


def local_checkpoint(ckpt: str | Path) -> tuple[Path, dict[str, str]]:
    """``(local file, provenance fields of CheckpointInfo)``: a hub reference (:mod:`transfer.hub`) is resolved
    through its hub's cache; a path is itself, with no provenance."""
    if not is_reference(ckpt):
        return Path(ckpt), {}
    try:
        got = resolve(str(ckpt))
    except HubError as e:
        raise CheckpointError(str(e)) from None
    return got.path, {"reference": got.reference, "resolved": got.pinned, "revision": got.revision}


def read_checkpoint(path: str | Path) -> tuple[Any, str]:
    """``(object, sha256)`` of ``path`` (a torch file or ``.safetensors``), read once, as data: a checkpoint
    never runs code. Classes a trainer pickled next to the weights (an mmengine Runner's ``HistoryBuffer``,
    numpy scalars) come back as inert placeholders (:mod:`transfer.backbones.read`); tensors as tensors."""
    try:
        return read_file(path)
    except (FileReadError, HubError) as e:
        raise CheckpointError(str(e)) from None


def add_backbone_arg(parser: argparse.ArgumentParser) -> None:
    """``--backbone NAME``, shared by transfer.convert, transfer.inspect_checkpoint and every task."""
    parser.add_argument("--backbone", default=None, metavar="NAME",
                        help="which backbone to use when the checkpoint holds several (e.g. momentum_backbone, "
                             "student, encoder_k): whole parts of its key prefix; see python -m transfer.inspect_checkpoint")


def run_configs(obj: Any, path: Path) -> list[Mapping]:
    """Where a checkpoint says how it was pretrained: its embedded ``config``, then the run's
    ``config.yaml`` next to it (safe YAML); either may be missing."""
    out = [obj["config"]] if isinstance(obj, Mapping) and isinstance(obj.get("config"), Mapping) else []
    config = path.parent / rundir.CONFIG
    if config.is_file():
        import yaml

        try:
            data = yaml.safe_load(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            data = None
        if isinstance(data, Mapping):
            out.append(data)
    return out


def find_method(obj: Any, path: Path) -> str | None:
    """The pretraining method, from an embedded config or the run's ``config.yaml``.

    A run's ``backbone_init.pth`` was never trained: its method is ``"init"``, whatever the run's.
    """
    if path.name == rundir.BACKBONE_INIT and (path.parent / rundir.CONFIG).is_file():
        return "init"
    return next((c["method"] for c in run_configs(obj, path) if isinstance(c.get("method"), str)), None)


def find_pretrain_seed(obj: Any, path: Path) -> int | None:
    """The ``seed`` the checkpoint was pretrained with (embedded config or run ``config.yaml``), if known."""
    return next((c["seed"] for c in run_configs(obj, path)
                 if isinstance(c.get("seed"), int) and not isinstance(c.get("seed"), bool)), None)


def run_dir_of(path: Path) -> str | None:
    """The pretraining run folder ``path`` sits in (it has the run's ``config.yaml``), else None."""
    return str(path.resolve().parent) if (path.parent / rundir.CONFIG).is_file() else None
