"""A ResNet candidate (:func:`transfer.backbones.load` found and chose it) as one canonical
torchvision-layout ResNet state_dict, plus what the tensors do not hold (the CIFAR stem's padding).

The canonical state_dict holds every key of ``torchvision.models.resnetX()`` except ``fc.*``, with
the exact shapes torchvision uses. Anything that cannot be mapped onto that (another depth,
missing or mis-shaped tensors) raises :class:`~transfer.backbones.info.CheckpointError` with a
one-line message that lists what was found. Accepted layouts: docs/CHECKPOINTS.md.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import torch
import torchvision
from torch import Tensor, nn

from transfer.backbones.candidates import backbone_tensors
from transfer.backbones.info import ConversionError, CheckpointError, CheckpointInfo, Located, find_method, find_pretrain_seed, run_dir_of
from transfer.backbones.resnet.layouts import guess_codebase

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


# Dropped on purpose: the classifier, and BN's step counter (no detectron2 counterpart).
DROPPED = re.compile(r"^fc\.(weight|bias)$|(^|\.)num_batches_tracked$")


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


def from_located(got: Located, padding: int | None = None) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """``(canonical torchvision state_dict, info)`` of the ResNet :func:`transfer.backbones.locate` chose.

    ``padding`` (``--stem-padding``) is a CIFAR stem's conv1 padding, else found in the file or None.
    """
    chosen, path, obj = got.chosen, got.path, got.obj
    stripped = backbone_tensors(chosen, got.flat)
    arch = detect_arch(stripped, got.where)
    stem = detect_stem(stripped)
    canonical = canonicalise(stripped, arch, got.where, stem)
    codebase = guess_codebase(obj, got.candidates, chosen)
    found, source = (padding, "--stem-padding") if padding is not None else find_stem_padding(obj, path, chosen.layout)
    if any(solo_learn_dataset(c) for _, c in saved_configs(obj, path)):  # its own saved cfg, not a key name
        codebase = "solo-learn"
    info = CheckpointInfo(
        path=str(path if got.provenance else path.resolve()),  # a hub file: its snapshot name, not the blob
        sha256=got.sha256, arch=arch, method=find_method(obj, path), pretrain_seed=find_pretrain_seed(obj, path),
        source_format=chosen.name or "torchvision", run_dir=run_dir_of(path), family="resnet",
        backbone=chosen.prefix, backbone_choice=got.how, candidates=tuple(c.name for c in got.candidates),
        layout=chosen.layout, codebase=codebase, stem=stem,
        stem_padding=found if stem == "cifar" else None, stem_padding_source=source if stem == "cifar" else "",
        **got.provenance,
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


def check_canonical(state: Mapping[str, Tensor], arch: str) -> list[str]:
    """Keys of ``state`` in torchvision order, after checking they are exactly ``arch``'s set."""
    expected = canonical_keys(arch)
    present = [k for k in state if not DROPPED.search(k)]
    wanted = [k for k in expected if not DROPPED.search(k)]
    missing = [k for k in wanted if k not in state]
    extra = sorted(set(present) - set(wanted))
    bad = [k for k in wanted if k in state and tuple(state[k].shape) != tuple(expected[k])]
    if missing or extra or bad:
        raise ConversionError(
            f"state_dict is not a complete {arch}: {len(missing)} missing {missing[:3]}, "
            f"{len(extra)} left over {extra[:3]}, {len(bad)} mis-shaped {bad[:3]}"
        )
    return wanted
