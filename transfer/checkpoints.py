"""Read any supported SSL checkpoint into one canonical torchvision-layout ResNet state_dict.

Every transfer task goes through :func:`load_backbone`, so a checkpoint is understood in exactly one
place. Accepted inputs (README "Accepted checkpoint layouts"):

- this project's ``backbone.pth`` (plain torchvision layout) and ``last.pth``
  (``{"model": {"backbone.*": ...}, "config": ...}``);
- a plain torchvision / timm ResNet state_dict (``fc.*`` is dropped deliberately);
- any nesting of wrapper dicts and key prefixes (solo-learn, lightly, VISSL, mmselfsup/mmpretrain,
  timm, MoCo, BYOL, DINO, Lightning), including lightly's ``nn.Sequential`` child indices: where
  the ResNet is found, and which one is taken when there are several, is :mod:`transfer.layouts`.
  ``backbone=`` (the tasks' ``--backbone``) names the one to take.

The canonical state_dict holds every key of ``torchvision.models.resnetX()`` except ``fc.*``, with
the exact shapes torchvision uses. Anything that cannot be mapped onto that (another architecture,
missing or mis-shaped tensors, several candidate backbones and no way to choose) raises
:class:`CheckpointError` with a one-line message that lists what was found.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torchvision
from torch import Tensor, nn

from mast import rundir
from plumbing.provenance import file_sha256
from transfer.vit_layouts import find_vit_candidates
from transfer.hub import HubError, is_reference, resolve, shard_files
from transfer.safe_files import INDEX_SUFFIX, FileReadError, Opaque, read_any
from transfer.layouts import (Candidate, LayoutError, backbone_tensors, choose, find_candidates, flatten,
                              guess_codebase)

# torchvision ResNet depth -> blocks per stage; the block type follows from the depth.
RESNET_LAYERS = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}
# The stem's first conv: present in every torchvision ResNet.
_ANCHOR = "conv1.weight"
STEMS = ("imagenet", "cifar")
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.(conv3|conv1)\.weight$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be mapped onto a torchvision ResNet (one-line message)."""


class HoldsViT(CheckpointError):
    """The checkpoint holds a Vision Transformer and no ResNet (:func:`transfer.vit.load_vit` reads it)."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    sha256: str
    arch: str
    method: str | None
    source_format: str  # the chosen backbone's key prefix, e.g. "state_dict.module.encoder_q" ("torchvision": none)
    run_dir: str | None
    backbone: str = ""  # the chosen candidate's flattened key prefix ("" for a plain state_dict)
    backbone_choice: str = "the only candidate"  # how it was chosen (--backbone, the only one, a convention)
    candidates: tuple[str, ...] = ()  # every candidate backbone found (identical copies merged)
    layout: str = "torchvision"  # "torchvision" names or lightly's "sequential" child indices
    codebase: str | None = None  # best guess of the writer, for people reading the record
    pretrain_seed: int | None = None  # the pretraining run's ``seed``, when its config says (pairs seeds in reports)
    stem: str = "imagenet"  # "imagenet" (7x7 stride-2 conv1 + max-pool) or "cifar" (3x3 stride-1 conv1, no max-pool)
    stem_padding: int | None = None  # the CIFAR stem's conv1 padding (not in the tensors; None: unknown)
    stem_padding_source: str = ""  # where it was found (--stem-padding, solo-learn's saved config, ...)
    reference: str = ""  # the hub reference --ckpt gave (transfer.hub), "" for a local file
    resolved: str = ""  # that reference pinned to what it resolved to (hf://ORG/REPO@<commit>/FILE, the URL)
    revision: str = ""  # the hub commit, or the library version whose enum/cfg named the URL


def weights_id(info: CheckpointInfo) -> str:
    """Cache key of the weights a task uses: the file's sha256, plus the chosen backbone when the
    file holds several (two choices from one file must never share converted weights or features)."""
    return info.sha256 if len(info.candidates) <= 1 else f"{info.sha256}@{info.backbone}"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The file's sha256; for a sharded checkpoint's ``*.index.json``, the sha256 of the index's and each
    shard's sha256 in the index's order (a changed shard changes it, as a changed file does)."""
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


def build_resnet(arch: str, stem: str = "imagenet", stem_padding: int | None = None) -> nn.Module:
    """A torchvision ResNet of ``arch`` with ``fc`` replaced by ``nn.Identity`` (random weights).

    ``stem="cifar"``: the CIFAR variant SSL codebases train on 32 px images (solo-learn, lightly's
    benchmarks, DIET...): ``conv1`` 3x3 stride 1 (padding ``stem_padding``) and no max-pool.
    """
    if arch not in RESNET_LAYERS:
        raise CheckpointError(f"unknown arch {arch!r}; expected one of {sorted(RESNET_LAYERS)}")
    if stem not in STEMS:
        raise CheckpointError(f"unknown stem {stem!r}; expected one of {sorted(STEMS)}")
    if stem == "cifar" and stem_padding is None:  # not in the tensors: never a default (require_stem_padding)
        raise CheckpointError(f"a CIFAR-stem {arch} needs its conv1 padding: pass --stem-padding N")
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = nn.Identity()
    if stem == "cifar":
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=stem_padding, bias=False)
        model.maxpool = nn.Identity()
    return model


def canonical_keys(arch: str, stem: str = "imagenet") -> dict[str, torch.Size]:
    """The canonical key -> shape table of ``arch`` (torchvision layout without ``fc``) with ``stem``."""
    return {k: v.shape for k, v in build_resnet(arch, stem, 1 if stem == "cifar" else None).state_dict().items()}


def detect_stem(state: Mapping[str, Tensor]) -> str:
    """``"cifar"`` when ``conv1`` is a 3x3 kernel (the CIFAR variant; its missing max-pool has no
    tensors and always goes with it), else ``"imagenet"`` (7x7)."""
    conv1 = state.get(_ANCHOR)
    return "cifar" if conv1 is not None and tuple(conv1.shape[-2:]) == (3, 3) else "imagenet"


# solo-learn builds its CIFAR stem with padding 2 for these datasets (solo/methods/base.py: ``cifar =
# cfg.data.dataset in ["cifar10", "cifar100"]`` -> ``nn.Conv2d(3, 64, 3, 1, 2)``) and for no other.
SOLO_LEARN_CIFAR = ("cifar10", "cifar100")
SAVED_CONFIG_MAX_BYTES = 1 << 20  # solo-learn's args.json is a few kB; a larger file is not one


def saved_configs(obj: Any, path: Path) -> list[tuple[str, Mapping]]:
    """``(where, config)`` the writer saved about the run: Lightning's ``hyper_parameters`` in the file
    (``save_hyperparameters``; solo-learn's ``cfg`` under it), and solo-learn's Checkpointer ``args.json``
    (``save_args``: the cfg as JSON, in the folder of the ``.ckpt`` it writes)."""
    out: list[tuple[str, Mapping]] = []
    hp = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
    if isinstance(hp, Mapping):
        out.append(("hyper_parameters", hp))
        if isinstance(hp.get("cfg"), Mapping):
            out.append(("hyper_parameters.cfg", hp["cfg"]))
    args = path.parent / "args.json"
    try:  # only a small regular file (a FIFO would block): anything else is not solo-learn's
        if args.is_file() and args.stat().st_size <= SAVED_CONFIG_MAX_BYTES:
            data = json.loads(args.read_text(encoding="utf-8"))
            if isinstance(data, Mapping):
                out.append((str(args), data))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        pass
    return out


def solo_learn_dataset(cfg: Mapping) -> str | None:
    """The pretraining dataset of a solo-learn config (``data.dataset`` in its omegaconf configs,
    ``dataset`` in the argparse era), or None when ``cfg`` is not solo-learn's (``method`` and ``backbone``)."""
    if not isinstance(cfg.get("method"), str) or "backbone" not in cfg:
        return None
    data = cfg.get("data")
    dataset = data.get("dataset") if isinstance(data, Mapping) else cfg.get("dataset")
    return dataset if isinstance(dataset, str) else None


def find_stem_padding(obj: Any, path: Path, layout: str) -> tuple[int | None, str]:
    """The CIFAR stem's conv1 padding, which the tensors do not hold, and where it was found; ``(None, why)``
    when nothing in the file says (then the probes refuse and ask for ``--stem-padding``: never a guess)."""
    for where, cfg in saved_configs(obj, path):
        dataset = solo_learn_dataset(cfg)
        if dataset in SOLO_LEARN_CIFAR:
            return 2, f"solo-learn's saved config ({where}: dataset {dataset})"
        if dataset is not None:
            return None, (f"its solo-learn config ({where}) names dataset {dataset!r}, for which solo-learn builds "
                          "no CIFAR stem")
    if layout == "sequential":  # lightly's nn.Sequential of a torchvision ResNet: lightly's CIFAR stem pads 1
        return 1, "lightly's nn.Sequential layout (its CIFAR ResNets pad conv1 by 1)"
    return None, "neither the file nor a solo-learn args.json beside it says how conv1 was padded"


def require_stem_padding(info: CheckpointInfo) -> None:
    """A CIFAR-stem network is built only with a known conv1 padding: one line asking for it otherwise."""
    if info.stem == "cifar" and info.stem_padding is None:
        raise CheckpointError(f"checkpoint {info.path} is a CIFAR-stem {info.arch} (3x3 stride-1 conv1) and its conv1 "
                              f"padding is not in its tensors: {info.stem_padding_source}; pass --stem-padding N "
                              "(solo-learn's CIFAR models: 2, lightly's and most others: 1)")


def refuse_cifar_stem(info: CheckpointInfo, engine: str) -> None:
    """Detectron2's and mmseg's ResNets have a 7x7 stride-2 stem and a max-pool (mmseg's V1c a deep
    3x3 stem of three convs): a 3x3 stride-1 conv1 has no place in them that computes the same network."""
    if info.stem == "cifar":
        raise CheckpointError(f"checkpoint {info.path} is a CIFAR-stem {info.arch} (3x3 stride-1 conv1, no max-pool); "
                              f"{engine}'s ResNet has a 7x7 stride-2 stem and a max-pool, so its weights cannot be "
                              "placed there: evaluate it with the probes (transfer.probes) at 32 px instead")


def add_backbone_arg(parser: argparse.ArgumentParser) -> None:
    """``--backbone NAME``, shared by transfer.convert, transfer.inspect_checkpoint and every task."""
    parser.add_argument("--backbone", default=None, metavar="NAME",
                        help="which backbone to use when the checkpoint holds several (e.g. momentum_backbone, "
                             "student, encoder_k): whole parts of its key prefix; see python -m transfer.inspect_checkpoint")


def read_checkpoint(path: str | Path) -> Any:
    """The object in ``path`` (a torch file or ``.safetensors``), read as data: a checkpoint never runs code.

    Classes a trainer pickled next to the weights (an mmengine Runner's ``HistoryBuffer``, numpy
    scalars) come back as inert placeholders (:mod:`transfer.safe_files`); tensors come back as tensors.
    """
    try:
        return read_any(path)
    except (FileReadError, HubError) as e:
        raise CheckpointError(str(e)) from None


def locate_backbone(obj: Any, path: Path, backbone: str | None = None) -> tuple[dict[str, Tensor], list[Candidate], Candidate, str]:
    """``(flat tensors, candidates, chosen, how it was chosen)`` of a loaded checkpoint object."""
    if isinstance(obj, Opaque):
        raise CheckpointError(f"checkpoint {path} holds a pickled {obj.global_name} object, not a state_dict; it is "
                              "never unpickled here: re-save it with torch.save(model.state_dict(), PATH)")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a state_dict (a dict of "
                              "tensors): re-save it with torch.save(model.state_dict(), PATH)")
    flat = flatten(obj)
    cands = find_candidates(flat)
    vits = find_vit_candidates(flat)
    if not cands and vits:  # a ViT: transfer.vit reads it (the tasks that take one)
        raise HoldsViT(f"checkpoint {path}: no ResNet weights found; it holds a Vision Transformer, which "
                              "this step does not take (the probes do; see docs/VIT.md)")
    if cands and vits:  # both families: the candidates are all of them, and only --backbone chooses
        choose_family(cands, vits, backbone, path)
    if not cands:
        raise CheckpointError(f"checkpoint {path}: no ResNet weights found (no 3-channel stem conv such as "
                              f"{_ANCHOR!r}; top-level keys: {', '.join(map(str, list(obj)[:8]))}); only torchvision-layout ResNets "
                              "are read: python -m transfer.inspect_checkpoint FILE lists what it holds")
    try:
        chosen, how = choose(cands, backbone, f"checkpoint {path}")
    except LayoutError as e:
        raise CheckpointError(str(e)) from None
    return flat, cands, chosen, how


def choose_family(resnets: list[Candidate], vits: list[Candidate], backbone: str | None, path: Path) -> None:
    """A file holding a ResNet and a ViT: ``--backbone`` naming a ViT candidate raises :class:`HoldsViT` (the
    ViT reader takes it); naming a ResNet returns; no ``--backbone`` is refused, listing both families."""
    from transfer.layouts import describe, matches_any

    if backbone and matches_any(backbone, vits) and not matches_any(backbone, resnets):
        raise HoldsViT(f"checkpoint {path}: --backbone {backbone} names a Vision Transformer")
    if not backbone:
        raise CheckpointError(f"checkpoint {path} holds a ResNet {describe(resnets)} and a Vision Transformer "
                              f"{describe(vits)}; choose one with --backbone NAME (e.g. --backbone "
                              f"{vits[0].name or '.'})")


def load_backbone(path: str | Path, backbone: str | None = None,
                  padding: int | None = None) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """Load ``path`` and return ``(canonical torchvision state_dict, info)``.

    ``backbone`` picks one of several candidate backbones by name (``--backbone``; any run of
    whole key-path parts of its prefix, e.g. ``momentum_backbone`` or ``student.module.backbone``).
    ``padding`` (``--stem-padding``) is a CIFAR stem's conv1 padding, else found in the file or None.
    """
    path, provenance = local_checkpoint(path)
    obj = read_checkpoint(path)
    flat, cands, chosen, how = locate_backbone(obj, path, backbone)
    stripped = backbone_tensors(chosen, flat)
    where = f"{path} [{chosen.name}]" if len(cands) > 1 else str(path)
    arch = detect_arch(stripped, where)
    stem = detect_stem(stripped)
    canonical = canonicalise(stripped, arch, where, stem)
    codebase = guess_codebase(obj, cands, chosen)
    found, source = (padding, "--stem-padding") if padding is not None else find_stem_padding(obj, path, chosen.layout)
    if any(solo_learn_dataset(c) for _, c in saved_configs(obj, path)):  # its own saved cfg, not a key name
        codebase = "solo-learn"
    info = CheckpointInfo(
        path=str(path if provenance else path.resolve()),  # a hub file: its snapshot name, not the blob
        sha256=sha256_file(path),
        arch=arch,
        method=find_method(obj, path),
        pretrain_seed=find_pretrain_seed(obj, path),
        source_format=chosen.name or "torchvision",
        run_dir=str(path.resolve().parent) if (path.parent / rundir.CONFIG).is_file() else None,
        backbone=chosen.prefix,
        backbone_choice=how,
        candidates=tuple(c.name for c in cands),
        layout=chosen.layout,
        codebase=codebase,
        stem=stem,
        stem_padding=found if stem == "cifar" else None,
        stem_padding_source=source if stem == "cifar" else "",
        **provenance,
    )
    return canonical, info


def detect_arch(state: Mapping[str, Tensor], path: Path | str) -> str:
    """The torchvision ResNet whose blocks per stage and block type ``state`` has (``path`` names it in errors)."""
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
    kind = "a CIFAR-stem ResNet (3x3 conv1)" if detect_stem(state) == "cifar" else "a ResNet"
    known = ", ".join(f"{a} {b}" for a, b in RESNET_LAYERS.items())
    raise CheckpointError(
        f"checkpoint {path} holds {kind} with blocks per stage {layers} ({'bottleneck' if bottleneck else 'basic'}), "
        f"which is no torchvision depth ({known}); only those depths can be evaluated"
    )


def canonicalise(state: Mapping[str, Tensor], arch: str, path: Path | str, stem: str = "imagenet") -> dict[str, Tensor]:
    """``state`` as exactly ``arch``'s canonical keys (with ``stem``); missing, mis-shaped or left-over tensors are refused."""
    expected = canonical_keys(arch, stem)
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    bad_shape = [k for k in expected if k in state and state[k].shape != expected[k]]
    if missing or bad_shape:
        raise CheckpointError(
            f"checkpoint {path} ({arch}): {len(missing)} missing tensors {missing[:4]}, "
            f"{len(bad_shape)} mis-shaped {bad_shape[:4]}; a truncated or modified ResNet? "
            "python -m transfer.inspect_checkpoint FILE lists what it holds"
        )
    extra = [k for k in state if k not in expected and not k.startswith("fc.")]
    if extra:
        raise CheckpointError(f"checkpoint {path} ({arch}): {len(extra)} unexpected backbone tensors {extra[:4]}; "
                              "a modified ResNet (extra layers) cannot be evaluated as a torchvision one")
    out = {}
    for key, shape in expected.items():
        value = state.get(key)
        if value is None:  # num_batches_tracked, absent in some exports
            value = torch.zeros(shape, dtype=torch.long)
        if value.layout != torch.strided:
            raise CheckpointError(f"checkpoint {path} ({arch}): tensor {key} is {value.layout}; expected dense "
                                  "weights: re-save it with every tensor .to_dense()")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"checkpoint {path} ({arch}): tensor {key} holds NaN/Inf values "
                                  f"({int((~torch.isfinite(value)).sum())} of {value.numel()}); a diverged run? "
                                  "evaluate an earlier checkpoint of it")
        out[key] = value.detach().clone()
    return out


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
