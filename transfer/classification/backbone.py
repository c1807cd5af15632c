"""The classification backbone: torchvision-layout SSL weights into mmpretrain's ``ResNet``, verified.

mmengine loads ``init_cfg=dict(type='Pretrained')`` non-strictly and only *warns* about keys it could
not place; a deep stem (``ResNetV1c``/``V1d``) or ``style='caffe'`` would silently compute another
network. This module refuses those configs, checks the built backbone's keys and shapes against the
converted file before training and its values before iteration 1, and reads the Runner's own files for
``--resume`` as data (``runner-file://``, :func:`transfer.backbones.read.read_runner_file`).

The same checks exist for mmseg in ``transfer/segmentation/backbone.py``; task packages may not import
one another (tests/test_layers.py), so they are restated here for mmpretrain's model (to fold into one
floor module with the backbones package).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from transfer.backbones.info import CheckpointInfo
from transfer.records import TaskFailed

PREFIX = "backbone."
RUNNER_SCHEME = "runner-file://"


class BackboneMismatch(ValueError):
    """The checkpoint and the config's backbone do not describe the same network (one line)."""


def stage_channels(depth: int) -> tuple[int, ...]:
    """Output channels of the four ResNet stages (basic blocks for 18/34, bottlenecks from 50)."""
    expansion = 1 if depth < 50 else 4
    return tuple(64 * 2 ** i * expansion for i in range(4))


def check_backbone_cfg(cfg: Any, info: CheckpointInfo, config_name: str) -> list[str]:
    """Refuse a backbone that is not torchvision's ResNet; set its depth (and the head's width) from ``info``."""
    backbone, where = cfg.model.backbone, f"config {config_name}: model.backbone"
    if str(backbone.get("type")) not in ("ResNet", "mmpretrain.ResNet") or backbone.get("deep_stem") \
            or backbone.get("avg_down"):
        raise BackboneMismatch(f"{where}: type={backbone.get('type')!r} deep_stem={backbone.get('deep_stem', False)} "
                               "cannot hold a torchvision ResNet checkpoint (its stem would stay random); use "
                               "type='ResNet', deep_stem=False, avg_down=False")
    if backbone.get("style", "pytorch") != "pytorch":
        raise BackboneMismatch(f"{where}.style={backbone.get('style')!r}: a torchvision ResNet strides in the 3x3 "
                               "conv (style='pytorch'); 'caffe' matches every name but computes another network")
    notes, depth = [], int(info.arch.removeprefix("resnet"))
    if int(backbone.get("depth") or depth) != depth:
        notes.append(f"model.backbone.depth {backbone.depth} -> {depth} (from the checkpoint)")
    backbone.depth = depth
    width = stage_channels(depth)[-1]
    if cfg.model.head.in_channels != width:  # the linear head reads the last stage, pooled
        notes.append(f"model.head.in_channels {cfg.model.head.in_channels} -> {width}")
        cfg.model.head.in_channels = width
    return notes


def read_converted(path: Path) -> dict[str, Tensor]:
    """The backbone part of a converted file, prefix removed (``weights_only=True``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}


def backbone_of(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model).backbone


def differing(backbone: nn.Module, expected: Mapping[str, Tensor]) -> list[str]:
    """Names of the backbone's tensors (weights and BatchNorm buffers) whose value is not ``expected``'s."""
    have = backbone.state_dict()
    return [k for k in have if not torch.equal(have[k].cpu(), expected[k].to(have[k].dtype))]


def verify_backbone_state(backbone: nn.Module, expected: Mapping[str, Tensor], check_values: bool) -> None:
    """Refuse unless ``backbone`` has exactly the keys and shapes of ``expected`` (and, if asked, its values)."""
    have = backbone.state_dict()
    missing, unexpected = sorted(set(have) - set(expected)), sorted(set(expected) - set(have))
    shapes = sorted(k for k in set(have) & set(expected) if have[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        raise BackboneMismatch(f"checkpoint does not fit {type(backbone).__name__}: {len(missing)} backbone keys "
                               f"missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
                               f"{len(shapes)} mis-shaped {shapes[:3]}")
    if check_values and (differ := differing(backbone, expected)):
        raise BackboneMismatch(f"{len(differ)} of {len(have)} backbone tensors differ from the checkpoint after "
                               f"mmengine's init_weights (e.g. {differ[:3]}): the pretrained weights were not loaded")


def verify_resumed(model: nn.Module, path: Path) -> None:
    """Every tensor of ``model`` holds the value the Runner file ``path`` saved (mmengine resumes non-strictly)."""
    from transfer.backbones.read import read_runner_file

    saved = read_runner_file(path)
    saved = saved.get("state_dict") if isinstance(saved, Mapping) else None
    saved = saved if isinstance(saved, Mapping) else {}
    own = getattr(model, "module", model).state_dict()
    bad = [k for k in own if not isinstance(saved.get(k), Tensor) or saved[k].shape != own[k].shape
           or not torch.equal(saved[k].to(own[k].device), own[k])]
    if bad:
        raise TaskFailed(f"--resume: {path} does not restore {len(bad)} of the model's {len(own)} tensors "
                         f"(e.g. {bad[:2]}); run without --resume to start over")


def make_loaded_hook(converted: Path, resumed: Path | None) -> Any:
    """Right before iteration 1: the converted backbone's values are in the model (or the resume restored all)."""
    from mmengine.hooks import Hook

    class BackboneLoadedHook(Hook):
        priority = "VERY_HIGH"

        def before_train(self, runner) -> None:
            if resumed is not None:
                verify_resumed(runner.model, resumed)
                return
            verify_backbone_state(backbone_of(runner.model), read_converted(converted), check_values=True)
            runner.logger.info(f"backbone: all weights of {converted} loaded (verified)")

    return BackboneLoadedHook()


def register_runner_scheme() -> None:
    """``runner-file://PATH``: a checkpoint the Runner wrote, read as data (never ``weights_only=False``)."""
    from mmengine.runner import CheckpointLoader

    from transfer.backbones.read import read_runner_file

    def load_runner_file(filename: str, map_location=None) -> Any:
        path = filename[len(RUNNER_SCHEME):]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} can not be found.")
        return read_runner_file(path)

    CheckpointLoader.register_scheme(prefixes=RUNNER_SCHEME, loader=load_runner_file, force=True)
