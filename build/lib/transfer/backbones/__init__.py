"""Backbones, one package per family (``resnet/``, ``vit/``), over a shared part that reads a checkpoint once.

    from transfer.backbones import load
    state, info = load("dino_vits16.pth")   # info.family: "resnet" or "vit"

- :mod:`~transfer.backbones.read`: a file read as data, never unpickled (tensors and plain containers);
- :mod:`~transfer.backbones.candidates`: the candidate backbones of a flattened file, merged and chosen;
- :mod:`~transfer.backbones.info`: :class:`CheckpointInfo` (with its ``family``), the errors;
- here: :func:`load` / :func:`locate` for every family (below);
- per family: ``layouts`` (where it sits, under which names), ``load`` (onto the reference network:
  torchvision's ResNet, timm's ViT), ``detectron2`` and ``mmseg`` (conversion per engine), ``inspection``.

One reader for every family: :func:`load` reads a checkpoint file once and returns the
backbone's state and its :class:`~transfer.backbones.info.CheckpointInfo` (``family`` set).

The file is read as data (:mod:`transfer.backbones.read`), flattened, and every family's candidates are
found (a ResNet by its stem conv, a ViT by its patch embedding). A file of one family goes to that
family's loader; a file holding both is refused until ``--backbone`` names one of them. The family's
loader (:func:`transfer.backbones.resnet.load.from_located`, :func:`transfer.backbones.vit.load.from_located`)
maps the chosen candidate onto its reference network (torchvision's ResNet, timm's ViT) exactly once.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from transfer.backbones.candidates import LayoutError, choose, describe, flatten, matches_any
from transfer.backbones.info import CheckpointError, CheckpointInfo, Located, local_checkpoint, read_checkpoint
from transfer.backbones.read import Opaque
from transfer.backbones.resnet.layouts import find_candidates
from transfer.backbones.vit.layouts import find_vit_candidates

__all__ = ["CheckpointError", "CheckpointInfo", "load", "locate"]

NAMES = {"resnet": "a ResNet", "vit": "a Vision Transformer"}


def read(ckpt: str | Path) -> Located:
    """Read ``ckpt`` (a path or a hub reference) once and find every family's candidates."""
    path, provenance = local_checkpoint(ckpt)
    obj, sha256 = read_checkpoint(path)
    if isinstance(obj, Opaque):
        raise CheckpointError(f"checkpoint {path} holds a pickled {obj.global_name} object, not a state_dict; it is "
                              "never unpickled here: re-save it with torch.save(model.state_dict(), PATH)")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a state_dict (a dict of "
                              "tensors): re-save it with torch.save(model.state_dict(), PATH)")
    flat = flatten(obj)
    found = {"resnet": find_candidates(flat), "vit": find_vit_candidates(flat)}
    return Located(path, provenance, obj, sha256, flat, found)


def choose_family(got: Located, backbone: str | None) -> str:
    """The family of the backbone to take: the only one the file holds, else the one ``--backbone`` names."""
    present = [f for f, cands in got.found.items() if cands]
    if not present:
        keys = ", ".join(map(str, list(got.obj)[:8]))
        raise CheckpointError(f"checkpoint {got.path}: no backbone weights found (no ResNet stem conv such as "
                              f"'conv1.weight', no ViT patch embedding 'patch_embed.proj.weight'; top-level keys: "
                              f"{keys}); python -m transfer.inspect_checkpoint FILE lists what it holds")
    if len(present) == 1:
        return present[0]
    named = [f for f in present if backbone and matches_any(backbone, got.found[f])]
    if len(named) == 1:
        return named[0]
    held = " and ".join(f"{NAMES[f]} {describe(got.found[f])}" for f in present)
    example = got.found["vit"][0].name or "."
    raise CheckpointError(f"checkpoint {got.path} holds {held}; choose one with --backbone NAME (e.g. --backbone "
                          f"{example})" + (f" (--backbone {backbone} names {len(named)} of them)" if backbone else ""))


def locate(ckpt: str | Path, backbone: str | None = None) -> Located:
    """:func:`read`, then the family and the candidate ``backbone`` (``--backbone``) or the conventions choose;
    a refusal is kept in ``error`` (``transfer.inspect_checkpoint`` still lists what the file holds)."""
    got = read(ckpt)
    try:
        family = choose_family(got, backbone)
    except CheckpointError as e:
        return _replace(got, error=str(e))
    try:
        chosen, how = choose(got.found[family], backbone, f"checkpoint {got.path}")
    except LayoutError as e:
        return _replace(got, family=family, error=str(e))
    return _replace(got, family=family, chosen=chosen, how=how)


def _replace(got: Located, **changes: Any) -> Located:
    return replace(got, **changes)


def load(ckpt: str | Path, backbone: str | None = None,
         padding: int | None = None) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """``(state, info)`` of the backbone in ``ckpt``, whatever its family (``info.family``).

    ``state`` is the reference network's state_dict: torchvision's ResNet (without ``fc``) or timm's
    ``VisionTransformer``. ``backbone`` picks one of several candidates by whole parts of its key path
    (``--backbone``); ``padding`` (``--stem-padding``) is a CIFAR-stem ResNet's conv1 padding.
    """
    got = locate(ckpt, backbone)
    if got.chosen is None:
        raise CheckpointError(got.error)
    if got.family == "vit":
        from transfer.backbones.vit.load import from_located

        return from_located(got)
    from transfer.backbones.resnet.load import from_located as resnet_from_located

    return resnet_from_located(got, padding)
