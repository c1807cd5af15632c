"""A torchvision-layout ResNet into detectron2: renamed (:func:`to_detectron2`), then loaded and proven loaded
(:func:`load_verified`).

:func:`to_detectron2` renames each tensor to detectron2's ResNet names (PROTOCOLS.md "Detection":
``conv1/bn1`` -> ``stem.conv1/.norm``, ``layerN`` -> ``res{N+1}``, ``bnK`` -> ``convK.norm``,
``downsample.0/.1`` -> ``shortcut/.norm``) with a hard coverage check: every backbone tensor is mapped
exactly once, ``fc.*`` and ``num_batches_tracked`` are dropped deliberately (detectron2's FrozenBN
reports the latter as unexpected), and anything else left over is an error. Unlike the usual chain of
string replaces, a key that no rule explains can never slip through (nor be silently dropped).

Detectron2 matches checkpoint names to model names by suffix and only *warns* about what it could
not place, so a wrong prefix trains silently from random weights (docs/ENVIRONMENT.md). Here loading is
followed by a check in both directions:

1. every tensor of the converted pickle lands in exactly one model tensor, with the same values
   after loading (``res5.*`` of a C4 model lives in ``roi_heads.res5``);
2. every parameter and statistic of the model's ResNet (the backbone's ``ResNet`` module and, for
   C4, the ROI head's res5 stage) came from the pickle, except the new layers the protocol adds
   (``roi_heads.res5.norm``, see :mod:`transfer.detection.heads`) and BN step counters.

Anything else raises :class:`WeightsNotLoaded` with a one-line summary.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from transfer.backbones.info import CheckpointInfo, ConversionError
from transfer.backbones.resnet.load import DROPPED, check_canonical, refuse_cifar_stem
from transfer.engines import require_detectron2

__all__ = ["ConversionError", "MAPPING_VERSION", "detectron2_name", "to_detectron2", "WeightsNotLoaded", "LoadReport",
           "backbone_keys", "load_verified"]

log = logging.getLogger(__name__)
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
def detectron2_name(key: str) -> str | None:
    """The detectron2 name of torchvision key ``key``; ``None`` when it is dropped on purpose.

    Raises :class:`ConversionError` for a key that no rule explains.
    """
    if DROPPED.search(key):
        return None
    hits = [rename(m) for pattern, rename in _RULES if (m := pattern.match(key))]
    if len(hits) != 1:
        raise ConversionError(f"no detectron2 mapping for backbone tensor {key!r}")
    return hits[0]


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
    order = check_canonical(state, info.arch)
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


# New layers a protocol adds on top of the pretrained ResNet; they start from their init.
NEW_LAYERS = ("roi_heads.res5.norm.",)


class WeightsNotLoaded(RuntimeError):
    """Some backbone tensor was not loaded from the converted checkpoint (one-line message)."""


@dataclass
class LoadReport:
    """What loading did: pickle name -> model name, and the model tensors left at their init."""

    placed: dict[str, str] = field(default_factory=dict)
    new_layers: list[str] = field(default_factory=list)
    detectron2_missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"loaded {len(self.placed)} backbone tensors (all verified); "
                f"{len(self.new_layers)} tensors of new layers left at init {self.new_layers[:4]}; "
                f"{len(self.detectron2_missing)} non-backbone tensors (heads) start from init")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def backbone_keys(model: nn.Module) -> list[str]:
    """State keys of the model's pretrained-ResNet part (without BN step counters)."""
    require_detectron2()  # the model is built by the caller (with the project's heads registered)
    from detectron2.modeling.backbone import ResNet
    from detectron2.modeling.roi_heads import Res5ROIHeads

    prefixes = [f"{name}." if name else "" for name, m in model.named_modules() if isinstance(m, ResNet)]
    prefixes += [f"{name}.res5." for name, m in model.named_modules() if isinstance(m, Res5ROIHeads)]
    if not prefixes:
        raise WeightsNotLoaded("the detectron2 model has no ResNet backbone to load a ResNet checkpoint into")
    return [k for k in model.state_dict()
            if any(k.startswith(p) for p in prefixes) and not k.endswith("num_batches_tracked")]


def _place(converted: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> tuple[dict[str, str], list[str]]:
    """Find the one model key each pickle key was loaded into; list the problems."""
    placed, problems = {}, []
    for key, value in converted.items():
        hits = [m for m in state if m == key or m.endswith("." + key)]
        if len(hits) != 1:
            problems.append(f"{key} matches {len(hits)} model tensors {hits[:2]}")
            continue
        target = state[hits[0]]
        if target.shape != value.shape or not torch.equal(target.detach().cpu().to(value.dtype), value):
            problems.append(f"{key} -> {hits[0]} does not hold the checkpoint's values")
            continue
        placed[key] = hits[0]
    return placed, problems


def load_verified(model: nn.Module, converted: Mapping[str, Any], source: str = "converted weights") -> LoadReport:
    """Load a :func:`to_detectron2` dict into ``model`` through detectron2's own
    name matching (in memory: nothing is unpickled) and verify coverage (module docstring)."""
    require_detectron2()  # the model is built by the caller (with the project's heads registered)
    from detectron2.checkpoint import DetectionCheckpointer

    if not (isinstance(converted, Mapping) and isinstance(converted.get("model"), Mapping)):
        raise WeightsNotLoaded(f"{source}: expected the dict of transfer.backbones.resnet.detectron2.to_detectron2")
    tensors = {k: torch.as_tensor(v) for k, v in converted["model"].items()}
    net = _unwrap(model)
    incompatible = DetectionCheckpointer(net)._load_model(
        {"model": {k: v.clone() for k, v in tensors.items()}, "__author__": converted.get("__author__"),
         "matching_heuristics": True})
    state = net.state_dict()
    placed, problems = _place(tensors, state)
    expected = backbone_keys(net)
    new_layers = [k for k in expected if k.startswith(NEW_LAYERS)]
    loaded = set(placed.values())
    never = [k for k in expected if k not in loaded and k not in new_layers]
    if incompatible is not None and incompatible.incorrect_shapes:
        problems += [f"{k}: checkpoint {a} vs model {b}" for k, a, b in incompatible.incorrect_shapes]
    if never:
        problems.append(f"{len(never)} backbone tensors not loaded from the checkpoint {never[:4]}")
    if problems:
        raise WeightsNotLoaded(f"{source}: {len(problems)} problems: " + "; ".join(problems[:4]))
    missing = list(incompatible.missing_keys) if incompatible is not None else []
    report = LoadReport(placed=placed, new_layers=new_layers,
                        detectron2_missing=[k for k in missing if k not in new_layers])
    log.info("weights %s: %s", source, report.summary())
    return report
