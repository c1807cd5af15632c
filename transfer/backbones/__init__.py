"""Backbones, one package per family (``resnet/``, ``vit/``), over a shared part that reads a checkpoint once.

    from transfer.backbones import load
    state, info = load("dino_vits16.pth")   # info.family: "resnet" or "vit"

- :mod:`~transfer.backbones.read`: a file read as data, never unpickled (tensors and plain containers);
- :mod:`~transfer.backbones.candidates`: the candidate backbones of a flattened file, merged and chosen;
- :mod:`~transfer.backbones.info`: :class:`CheckpointInfo` (with its ``family``), the errors;
- :mod:`~transfer.backbones.loader`: :func:`load` / :func:`locate` for every family;
- per family: ``layouts`` (where it sits, under which names), ``load`` (onto the reference network:
  torchvision's ResNet, timm's ViT), ``detectron2`` and ``mmseg`` (conversion per engine), ``inspection``.
"""

from transfer.backbones.info import CheckpointError, CheckpointInfo
from transfer.backbones.loader import load, locate

__all__ = ["CheckpointError", "CheckpointInfo", "load", "locate"]
