"""Convert a pretrained torchvision-layout ResNet into the formats the downstream engines load.

``python -m transfer.convert --ckpt X --to detectron2|mmseg --out Y``

The checkpoint is read by :func:`transfer.checkpoints.load_backbone` (every accepted wrapping and
prefix ends up as one canonical torchvision state_dict). From there:

- :func:`to_detectron2` renames each tensor to detectron2's ResNet names (PROTOCOLS.md
  "Detection": ``conv1/bn1`` -> ``stem.conv1/.norm``, ``layerN`` -> ``res{N+1}``, ``bnK`` ->
  ``convK.norm``, ``downsample.0/.1`` -> ``shortcut/.norm``) with a hard coverage check: every
  backbone tensor is mapped exactly once, ``fc.*`` and ``num_batches_tracked`` are dropped
  deliberately (detectron2's FrozenBN reports the latter as unexpected), and anything else left
  over is an error. Unlike the usual chain of string replaces, a key that no rule explains can
  never slip through (nor be silently dropped).
- :func:`to_mmseg` keeps torchvision names under a ``backbone.`` prefix (mmseg ``ResNet`` with
  ``style='pytorch'`` uses torchvision's names).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from plumbing.atomic import DiskFullError, OutputError, pickle_atomic, torch_save_atomic

from transfer.checkpoints import (CheckpointError, CheckpointInfo, add_backbone_arg, canonical_keys, load_backbone,
                                  refuse_cifar_stem)

__all__ = ["ConversionError", "MAPPING_VERSION", "detectron2_name", "to_detectron2", "to_mmseg", "convert_file", "main"]

MAPPING_VERSION = "torchvision->detectron2 v1"
AUTHOR = "MAST transfer.convert (torchvision ResNet -> detectron2)"
_BN = r"(weight|bias|running_mean|running_var)"
# Each rule: torchvision key pattern -> detectron2 name template (groups: stage, block, index, param).
_RULES: tuple[tuple[re.Pattern, Callable[[re.Match], str]], ...] = (
    (re.compile(r"^conv1\.weight$"), lambda m: "stem.conv1.weight"),
    (re.compile(rf"^bn1\.{_BN}$"), lambda m: f"stem.conv1.norm.{m[1]}"),
    (re.compile(r"^layer([1-4])\.(\d+)\.conv([1-3])\.weight$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"),
    (re.compile(rf"^layer([1-4])\.(\d+)\.bn([1-3])\.{_BN}$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (re.compile(r"^layer([1-4])\.(\d+)\.downsample\.0\.weight$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.weight"),
    (re.compile(rf"^layer([1-4])\.(\d+)\.downsample\.1\.{_BN}$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
)
# Dropped on purpose: the classifier, and BN's step counter (no detectron2 counterpart).
_DROPPED = re.compile(r"^fc\.(weight|bias)$|(^|\.)num_batches_tracked$")


class ConversionError(ValueError):
    """A state_dict that cannot be converted completely (one-line message)."""


def detectron2_name(key: str) -> str | None:
    """The detectron2 name of torchvision key ``key``; ``None`` when it is dropped on purpose.

    Raises :class:`ConversionError` for a key that no rule explains.
    """
    if _DROPPED.search(key):
        return None
    hits = [rename(m) for pattern, rename in _RULES if (m := pattern.match(key))]
    if len(hits) != 1:
        raise ConversionError(f"no detectron2 mapping for backbone tensor {key!r}")
    return hits[0]


def _check_canonical(state: Mapping[str, Tensor], arch: str) -> list[str]:
    """Keys of ``state`` in torchvision order, after checking they are exactly ``arch``'s set."""
    expected = canonical_keys(arch)
    present = [k for k in state if not _DROPPED.search(k)]
    wanted = [k for k in expected if not _DROPPED.search(k)]
    missing = [k for k in wanted if k not in state]
    extra = sorted(set(present) - set(wanted))
    bad = [k for k in wanted if k in state and tuple(state[k].shape) != tuple(expected[k])]
    if missing or extra or bad:
        raise ConversionError(
            f"state_dict is not a complete {arch}: {len(missing)} missing {missing[:3]}, "
            f"{len(extra)} left over {extra[:3]}, {len(bad)} mis-shaped {bad[:3]}"
        )
    return wanted


def to_detectron2(state: Mapping[str, Tensor], info: CheckpointInfo) -> dict[str, Any]:
    """Detectron2 model-zoo pickle of a canonical torchvision ResNet state_dict.

    Returns ``{"model": {d2 name: float32 ndarray}, "__author__", "matching_heuristics": True,
    "mapping_version", "source_path", "source_sha256", "arch", "method", "source_format",
    "source_backbone", "backbone_choice"}``;
    ``matching_heuristics`` lets detectron2 place ``res5.*`` in the C4 ROI head. Coverage is
    checked both ways: every kept input tensor maps to exactly one new name and no two inputs
    share one.
    """
    refuse_cifar_stem(info, "detectron2")
    order = _check_canonical(state, info.arch)
    model: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for key in order:
        name = detectron2_name(key)
        assert name is not None  # dropped keys were filtered out above
        if name in model:
            raise ConversionError(f"{key!r} and {sources[name]!r} both map to detectron2 name {name!r}")
        model[name] = state[key].detach().cpu().to(torch.float32).numpy().copy()
        sources[name] = key
    return {
        "model": model,
        "__author__": AUTHOR,
        "matching_heuristics": True,
        "mapping_version": MAPPING_VERSION,
        "source_path": info.path,
        "source_sha256": info.sha256,
        "arch": info.arch,
        "method": info.method,
        "source_format": info.source_format,
        "source_backbone": info.backbone,
        "backbone_choice": info.backbone_choice,
    }


def to_mmseg(state: Mapping[str, Tensor], info: CheckpointInfo) -> dict[str, Tensor]:
    """Plain state_dict for mmseg ``ResNet(style='pytorch')``: torchvision names under ``backbone.``.

    ``num_batches_tracked`` is kept (mmseg's BN has it), ``fc.*`` is dropped. Load with
    ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.
    """
    refuse_cifar_stem(info, "mmseg")
    order = _check_canonical(state, info.arch)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    return {f"backbone.{k}": state[k].detach().cpu().clone() for k in order + counters}


def convert_file(ckpt: str | Path, to: str, out: str | Path, backbone: str | None = None) -> CheckpointInfo:
    """Read ``ckpt`` (its backbone ``backbone`` when it holds several), convert it for engine ``to``
    and write ``out`` atomically."""
    state, info = load_backbone(ckpt, backbone)
    if to == "detectron2":
        pickle_atomic(out, to_detectron2(state, info))
    elif to == "mmseg":
        torch_save_atomic(out, to_mmseg(state, info))
    else:
        raise ConversionError(f"--to {to!r}: expected 'detectron2' or 'mmseg'")
    return info


def check_out(ckpt: Path, out: Path, force: bool) -> None:
    """--out must be a new file (or --force), never a folder and never the input checkpoint."""
    if not out.name or out.is_dir():
        raise ConversionError(f"--out {out}: is a folder; expected an output file name")
    if out.exists() and ckpt.exists() and out.resolve() == ckpt.resolve():
        raise ConversionError(f"--out {out}: is the input --ckpt; write the converted file elsewhere")
    if out.exists() and not force:
        raise ConversionError(f"--out {out}: exists; pass --force to replace it")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer.convert", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="pretrained checkpoint (.pth); any accepted wrapping")
    parser.add_argument("--to", required=True, choices=("detectron2", "mmseg"))
    parser.add_argument("--out", required=True, help="output file (.pkl for detectron2, .pth for mmseg)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out (never the --ckpt itself)")
    add_backbone_arg(parser)
    args = parser.parse_args(argv)
    try:
        check_out(Path(args.ckpt), Path(args.out), args.force)
        info = convert_file(args.ckpt, args.to, args.out, args.backbone)
    except (CheckpointError, ConversionError, DiskFullError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {info.arch} from {info.path} (sha256 {info.sha256[:12]}, backbone "
          f"'{info.source_format}': {info.backbone_choice}) for {args.to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
