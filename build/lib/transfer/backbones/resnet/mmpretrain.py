"""A torchvision-layout ResNet into mmpretrain's ``ResNet``: the config checked against the checkpoint, the weights saved.

mmpretrain's ``ResNet(style='pytorch')`` has torchvision's names, so the converted file is mmseg's
(:func:`transfer.backbones.resnet.mmseg.to_mmseg`: torchvision names under ``backbone.``). A deep stem
(``deep_stem``/``avg_down``) or ``style='caffe'`` would silently compute another network:
:func:`check_backbone_cfg` refuses both before anything is built, sets the depth from the checkpoint and
the linear head's width to the last stage's. :mod:`transfer.backbones.mmengine_weights` verifies after
mmengine's load that every tensor arrived.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from transfer.backbones.info import BackboneMismatch, CheckpointInfo
from transfer.backbones.resnet.mmseg import arch_depth, stage_channels, to_mmseg

MMPRETRAIN_TYPES = ("ResNet", "mmpretrain.ResNet")


def check_backbone_cfg(cfg: Any, info: CheckpointInfo, config_name: str) -> list[str]:
    """Refuse a backbone that is not torchvision's ResNet; set its depth (and the head's width) from ``info``."""
    backbone, where = cfg.model.backbone, f"config {config_name}: model.backbone"
    if str(backbone.get("type")) not in MMPRETRAIN_TYPES or backbone.get("deep_stem") or backbone.get("avg_down"):
        raise BackboneMismatch(f"{where}: type={backbone.get('type')!r} deep_stem={backbone.get('deep_stem', False)} "
                               "cannot hold a torchvision ResNet checkpoint (its stem would stay random); use "
                               "type='ResNet', deep_stem=False, avg_down=False")
    if backbone.get("style", "pytorch") != "pytorch":
        raise BackboneMismatch(f"{where}.style={backbone.get('style')!r}: a torchvision ResNet strides in the 3x3 "
                               "conv (style='pytorch'); 'caffe' matches every name but computes another network")
    notes, depth = [], arch_depth(info.arch)
    if int(backbone.get("depth") or depth) != depth:
        notes.append(f"model.backbone.depth {backbone.depth} -> {depth} (from the checkpoint)")
    backbone.depth = depth
    width = stage_channels(depth)[-1]
    if cfg.model.head.in_channels != width:  # the linear head reads the last stage, pooled
        notes.append(f"model.head.in_channels {cfg.model.head.in_channels} -> {width}")
        cfg.model.head.in_channels = width
    return notes


def to_mmpretrain_file(state: Mapping[str, Tensor], info: CheckpointInfo, out_dir: Path) -> Path:
    """``out_dir/backbone_mmpretrain.pth``, atomically: the canonical backbone under ``backbone.`` (mmseg's format)."""
    from plumbing.atomic import torch_save_atomic

    path = Path(out_dir) / "backbone_mmpretrain.pth"
    torch_save_atomic(path, to_mmseg(state, info))
    return path
