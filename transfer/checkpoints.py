"""Read any supported SSL checkpoint into one canonical torchvision-layout ResNet state_dict.

Every transfer task goes through :func:`load_backbone`, so a checkpoint is understood in exactly one
place. Accepted inputs:

- this project's ``backbone.pth`` (plain torchvision layout) and ``last.pth``
  (``{"model": {"backbone.*": ...}, "config": ...}``);
- a plain torchvision ResNet state_dict (``fc.*`` is dropped deliberately);
- the common SSL wrappings: a top-level ``state_dict`` / ``model`` / ``teacher`` key, and key
  prefixes such as ``module.``, ``backbone.``, ``module.backbone.``, ``module.encoder_q.``,
  ``encoder.``.

The canonical state_dict holds every key of ``torchvision.models.resnetX()`` except ``fc.*``, with
the exact shapes torchvision uses. Anything that cannot be mapped onto that (another architecture,
missing or mis-shaped tensors, two candidate backbones in one file) raises :class:`CheckpointError`
with a one-line message that lists what was found.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torchvision
from torch import Tensor, nn

# torchvision ResNet depth -> blocks per stage; the block type follows from the depth.
RESNET_LAYERS = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}
WRAPPER_KEYS = ("state_dict", "model", "teacher", "student", "online_network")
# Dot-separated prefix segments that SSL codebases put in front of the backbone's names.
KNOWN_PREFIX_PARTS = frozenset(
    {"module", "backbone", "encoder", "encoder_q", "base_encoder", "model", "teacher", "student",
     "online_network", "net", "trunk", "network", "resnet", "body", "_orig_mod"}
)
# When a file holds a query and a key (momentum) encoder, the query one is the pretrained backbone.
_MOMENTUM_PARTS = ("encoder_k", "momentum_encoder", "target_network", "momentum")
# The stem's first conv: present in every torchvision ResNet, so it anchors prefix detection.
_ANCHOR = "conv1.weight"
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.(conv3|conv1)\.weight$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be mapped onto a torchvision ResNet (one-line message)."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    sha256: str
    arch: str
    method: str | None
    source_format: str  # e.g. "torchvision", "mast-last", "state_dict+module.encoder_q."
    run_dir: str | None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def build_resnet(arch: str) -> nn.Module:
    """A torchvision ResNet of ``arch`` with ``fc`` replaced by ``nn.Identity`` (random weights)."""
    if arch not in RESNET_LAYERS:
        raise CheckpointError(f"unknown arch {arch!r}; expected one of {sorted(RESNET_LAYERS)}")
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = nn.Identity()
    return model


def canonical_keys(arch: str) -> dict[str, torch.Size]:
    """The canonical key -> shape table of ``arch`` (torchvision layout without ``fc``)."""
    return {k: v.shape for k, v in build_resnet(arch).state_dict().items()}


def load_backbone(path: str | Path) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """Load ``path`` and return ``(canonical torchvision state_dict, info)``.

    Tensors are loaded with ``weights_only=True``: a checkpoint is data, never code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a .pth/.pt/.pkl file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user-facing error
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read as a torch file ({msg[:200]})") from None
    state, wrapper = _unwrap(obj, path)
    prefix = _find_prefix(state, path)
    stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    arch = _detect_arch(stripped, path)
    canonical = _canonicalise(stripped, arch, path)
    fmt = "+".join(p for p in (wrapper, prefix or None) if p) or "torchvision"
    info = CheckpointInfo(
        path=str(path.resolve()),
        sha256=sha256_file(path),
        arch=arch,
        method=_find_method(obj, path),
        source_format=fmt,
        run_dir=str(path.resolve().parent) if (path.parent / "config.yaml").is_file() else None,
    )
    return canonical, info


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, Tensor], str | None]:
    """Descend through the usual wrapper keys until a flat name -> tensor mapping is reached."""
    wrapper: list[str] = []
    for _ in range(3):
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a state_dict (a dict of tensors)")
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        if tensors and any(k.endswith(_ANCHOR) for k in tensors):
            return tensors, ".".join(wrapper) or None
        inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        wrapper.append(inner)
        obj = obj[inner]
    found = ", ".join(list(obj)[:8]) if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(
        f"checkpoint {path}: no ResNet weights found (no key ending in {_ANCHOR!r}; top-level keys: {found})"
    )


def _find_prefix(state: Mapping[str, Tensor], path: Path) -> str:
    """The one prefix in front of ``conv1.weight``; two candidate backbones is an error."""
    prefixes = sorted({k[: -len(_ANCHOR)] for k in state if k.endswith(_ANCHOR)})
    # ``layer1.0.conv1.weight`` also ends in ``conv1.weight``: keep only stem candidates.
    stems = [p for p in prefixes if not re.search(r"layer\d\.\d+\.$", p)]
    if len(stems) > 1:
        online = [p for p in stems if not any(part in p.split(".") for part in _MOMENTUM_PARTS)]
        stems = online if len(online) == 1 else stems
    if len(stems) != 1:
        raise CheckpointError(
            f"checkpoint {path}: expected one ResNet backbone, found {len(stems)} candidate prefixes {stems}"
        )
    unknown = [part for part in stems[0].split(".")[:-1] if part not in KNOWN_PREFIX_PARTS]
    if unknown:
        raise CheckpointError(
            f"checkpoint {path}: unrecognised key prefix {stems[0]!r} (parts {unknown}); "
            f"expected parts from {sorted(KNOWN_PREFIX_PARTS)}"
        )
    return stems[0]


def _detect_arch(state: Mapping[str, Tensor], path: Path) -> str:
    blocks = Counter()
    bottleneck = False
    for key in state:
        if m := _BLOCK_KEY.match(key):
            if m.group(3) == "conv1":
                blocks[int(m.group(1))] = max(blocks[int(m.group(1))], int(m.group(2)) + 1)
            else:
                bottleneck = True
    layers = tuple(blocks[i] for i in range(1, 5))
    for arch, expected in RESNET_LAYERS.items():
        is_bottleneck = arch not in ("resnet18", "resnet34")
        if layers == expected and is_bottleneck == bottleneck:
            return arch
    raise CheckpointError(
        f"checkpoint {path}: blocks per stage {layers} ({'bottleneck' if bottleneck else 'basic'}) match no "
        f"torchvision ResNet (expected one of {RESNET_LAYERS})"
    )


def _canonicalise(state: Mapping[str, Tensor], arch: str, path: Path) -> dict[str, Tensor]:
    expected = canonical_keys(arch)
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    bad_shape = [k for k in expected if k in state and state[k].shape != expected[k]]
    if missing or bad_shape:
        raise CheckpointError(
            f"checkpoint {path} ({arch}): {len(missing)} missing tensors {missing[:4]}, "
            f"{len(bad_shape)} mis-shaped {bad_shape[:4]}"
        )
    extra = [k for k in state if k not in expected and not k.startswith("fc.")]
    if extra:
        raise CheckpointError(f"checkpoint {path} ({arch}): {len(extra)} unexpected backbone tensors {extra[:4]}")
    out = {}
    for key, shape in expected.items():
        value = state.get(key)
        if value is None:  # num_batches_tracked, absent in some exports
            value = torch.zeros(shape, dtype=torch.long)
        out[key] = value.detach().clone()
    return out


INIT_CHECKPOINT = "backbone_init.pth"  # a run's network before step 1 (mast.pretrain writes it)


def _find_method(obj: Any, path: Path) -> str | None:
    """The pretraining method, from an embedded config or the run's ``config.yaml``.

    A run's ``backbone_init.pth`` was never trained: its method is ``"init"``, whatever the run's.
    """
    if path.name == INIT_CHECKPOINT and (path.parent / "config.yaml").is_file():
        return "init"
    if isinstance(obj, Mapping) and isinstance(obj.get("config"), Mapping):
        method = obj["config"].get("method")
        if isinstance(method, str):
            return method
    config = path.parent / "config.yaml"
    if config.is_file():
        import yaml

        try:
            data = yaml.safe_load(config.read_text())
        except yaml.YAMLError:
            return None
        if isinstance(data, Mapping) and isinstance(data.get("method"), str):
            return data["method"]
    return None
