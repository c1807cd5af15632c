"""A torchvision-layout ResNet into mmseg's ``ResNet``: the config checked against the checkpoint, the weights renamed.

mmengine loads ``init_cfg=dict(type='Pretrained')`` with ``strict=False`` and only *warns* about
keys it could not place (docs/ENVIRONMENT.md, "MMSegmentation"). Two configurations are silently wrong
for a torchvision checkpoint: ``ResNetV1c``/``deep_stem=True`` (the deep stem stays random) and
``style='caffe'`` (every name matches, the stride sits on the 1x1 conv instead of the 3x3, so the
network computes something else). :func:`check_backbone_cfg` refuses both before training and sets the
depth from the checkpoint; :func:`to_mmseg` keeps torchvision names under a ``backbone.`` prefix (mmseg
``ResNet`` with ``style='pytorch'`` uses torchvision's names). :mod:`transfer.backbones.mmengine_weights`
verifies after mmengine's load that every tensor arrived.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from torch import Tensor

from transfer.backbones.info import BackboneMismatch, CheckpointInfo
from transfer.backbones.resnet.load import check_canonical, refuse_cifar_stem

MMSEG_PREFIX = "backbone."
# Backbone types that build a torchvision-like ResNet; only plain ResNet without deep stem matches.
RESNET_TYPES = ("ResNet", "ResNetV1c", "ResNetV1d", "mmseg.ResNet", "mmseg.ResNetV1c", "mmseg.ResNetV1d")



def to_mmseg(state: Mapping[str, Tensor], info: CheckpointInfo) -> dict[str, Tensor]:
    """Plain state_dict for mmseg ``ResNet(style='pytorch')``: torchvision names under ``backbone.``.

    ``num_batches_tracked`` is kept (mmseg's BN has it), ``fc.*`` is dropped. Load with
    ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.
    """
    refuse_cifar_stem(info, "mmseg")
    order = check_canonical(state, info.arch)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    return {f"backbone.{k}": state[k].detach().cpu().clone() for k in order + counters}


def arch_depth(arch: str) -> int:
    """``'resnet50'`` -> 50."""
    return int(arch.removeprefix("resnet"))


def stage_channels(depth: int) -> tuple[int, ...]:
    """Output channels of the four ResNet stages (basic blocks for 18/34, bottlenecks from 50)."""
    expansion = 1 if depth < 50 else 4
    return tuple(64 * 2 ** i * expansion for i in range(4))


def check_backbone_cfg(backbone: dict, info: CheckpointInfo, config_name: str, heads: tuple = ()) -> list[str]:
    """Refuse a backbone config that cannot reproduce the torchvision network of ``info``.

    The depth comes from the checkpoint: a config written for another depth is adapted when each
    of ``heads`` (decode/auxiliary head configs) reads a stage at that depth's width (``in_channels``
    = the stage's channels at ``in_index``): depth and those widths are set for the checkpoint.
    A head with other widths is refused. Returns notes on what was changed.
    """
    btype = str(backbone.get("type"))
    where = f"config {config_name}: model.backbone"
    if btype not in RESNET_TYPES:
        raise BackboneMismatch(
            f"{where}.type={btype!r} cannot hold a torchvision ResNet checkpoint; use type='ResNet', style='pytorch'"
        )
    style = backbone.get("style", "pytorch")
    if style != "pytorch":
        raise BackboneMismatch(
            f"{where}.style={style!r}: a torchvision ResNet strides in the 3x3 conv (style='pytorch'); "
            "'caffe' matches every name but computes a different network"
        )
    if btype.endswith(("V1c", "V1d")) or backbone.get("deep_stem") or backbone.get("avg_down"):
        raise BackboneMismatch(
            f"{where}: type={btype!r} deep_stem={backbone.get('deep_stem', False)} "
            f"avg_down={backbone.get('avg_down', False)} does not match a torchvision ResNet "
            "(its deep stem would stay random); use type='ResNet', deep_stem=False, avg_down=False"
        )
    depth = arch_depth(info.arch)
    if backbone.get("depth") is None or int(backbone["depth"]) == depth:
        backbone["depth"] = depth
        return []
    old = int(backbone["depth"])
    notes = [f"model.backbone.depth {old} -> {depth} (from the checkpoint)"]
    for head in (h for h in heads if h):
        index, width = head.get("in_index", -1), head.get("in_channels")
        if not isinstance(index, int) or width != stage_channels(old)[index]:
            raise BackboneMismatch(
                f"checkpoint {info.path} is a {info.arch} but {where}.depth={old}, and head {head.get('type')} "
                f"in_channels={width} (in_index={index}) is not a depth-{old} stage width; use a config written "
                f"for depth {depth}"
            )
        head["in_channels"] = stage_channels(depth)[index]
        notes.append(f"{head.get('type')} in_channels {width} -> {head['in_channels']}")
    backbone["depth"] = depth
    return notes


def to_mmseg_file(state: Mapping[str, Tensor], info: CheckpointInfo, out_dir: Path) -> Path:
    """Convert a canonical state_dict (:func:`to_mmseg`) into ``out_dir/backbone_mmseg.pth``, atomically."""
    from plumbing.atomic import torch_save_atomic

    path = Path(out_dir) / "backbone_mmseg.pth"
    torch_save_atomic(path, to_mmseg(state, info))
    return path
