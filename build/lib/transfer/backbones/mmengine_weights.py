"""A converted backbone inside an mmengine Runner's model, verified: every tensor arrived, and a resume restored all.

Shared by the mmengine task packages (``transfer.segmentation`` on mmseg, ``transfer.classification``
on mmpretrain), which may not import one another. mmengine loads ``init_cfg=dict(type='Pretrained')``
with ``strict=False`` and only *warns* about keys it could not place; the conversion and the config
checks are the family's per engine (:mod:`transfer.backbones.resnet.mmseg`,
:mod:`transfer.backbones.resnet.mmpretrain`, :mod:`transfer.backbones.vit.mmseg`). Here:

- :func:`verify_backbone_state`: every key of the built backbone is in the converted checkpoint
  with the same shape, and nothing is left over (and, after mmengine's load, equal values);
- :func:`attach_verification`: that check on the built model before any data is read, and a hook that
  runs it on the values right before iteration 1 (or, for a resume, checks that the file restored
  every tensor of the model).

It also lets the Runner reload its *own* checkpoints (resume): torch >= 2.6 refuses a Runner file
under ``weights_only=True`` (its message hub pickles ``HistoryBuffer``), and a file in the run's
folder is no more trusted than any other. The ``runner-file://`` scheme reads it with
:func:`transfer.backbones.read.read_torch_file`: ``weights_only``, with only the message hub's exact
classes rebuilt (:func:`transfer.backbones.read.runner_admits`); nothing in the file is ever run.
User checkpoints keep going through :func:`transfer.backbones.load`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from transfer.backbones.info import BackboneMismatch
from transfer.backbones.resnet.mmseg import MMSEG_PREFIX

RUNNER_SCHEME = "runner-file://"


def read_converted(path: Path) -> dict[str, Tensor]:
    """The backbone part of a converted file, prefix removed (user data: ``weights_only=True``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state.get("state_dict"), dict):  # a ViT file: mmseg's MAE.init_weights reads it unprefixed
        return state["state_dict"]
    return {k[len(MMSEG_PREFIX):]: v for k, v in state.items() if k.startswith(MMSEG_PREFIX)}


def differing(backbone: nn.Module, expected: Mapping[str, Tensor]) -> list[str]:
    """Names of the backbone's tensors (weights and BatchNorm buffers) whose value is not ``expected``'s."""
    have = backbone.state_dict()
    return [k for k in have if not torch.equal(have[k].cpu(), expected[k].to(have[k].dtype))]


def verify_backbone_state(backbone: nn.Module, expected: Mapping[str, Tensor], check_values: bool) -> None:
    """Refuse unless ``backbone`` has exactly the keys and shapes of ``expected`` (and its values).

    ``check_values`` compares every tensor, to prove that the engine's own load happened.
    """
    have = backbone.state_dict()
    missing = sorted(set(have) - set(expected))
    unexpected = sorted(set(expected) - set(have))
    shapes = sorted(k for k in set(have) & set(expected) if have[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        hint = ""
        if any(k.startswith("stem.") for k in missing):
            hint = " (a deep stem: use type='ResNet', deep_stem=False)"
        raise BackboneMismatch(
            f"checkpoint does not fit {type(backbone).__name__}: {len(missing)} backbone keys missing "
            f"{missing[:3]}{hint}, {len(unexpected)} unexpected {unexpected[:3]}, "
            f"{len(shapes)} mis-shaped {shapes[:3]}"
        )
    if check_values and (differ := differing(backbone, expected)):
        raise BackboneMismatch(
            f"{len(differ)} of {len(have)} backbone tensors differ from the checkpoint after "
            f"mmengine's init_weights (e.g. {differ[:3]}): the pretrained weights were not loaded"
        )


def backbone_of(model: nn.Module) -> nn.Module:
    """The model's backbone (segmentor or classifier), through a DDP-style wrapper if any."""
    inner = getattr(model, "module", model)
    if not hasattr(inner, "backbone"):
        raise BackboneMismatch(f"{type(inner).__name__} has no .backbone to load the checkpoint into")
    return inner.backbone


def attach_verification(runner: Any, converted: Path, resumed: Path | None) -> None:
    """Check the built model's backbone against ``converted`` (names and shapes, before any data is read),
    and register :func:`make_loaded_hook`, which checks the loaded values before iteration 1."""
    verify_backbone_state(backbone_of(runner.model), read_converted(converted), check_values=False)
    runner.register_hook(make_loaded_hook(converted, resumed))


def make_loaded_hook(expected_path: Path, resumed: Path | None) -> Any:
    """An mmengine hook that verifies the weights right before the first iteration: the converted
    backbone's, or for a resumed run (``resumed``: the Runner file) that the file restored every tensor
    of the model (mmengine loads a resume non-strictly: an empty ``state_dict`` would train nothing and
    evaluate an untrained head)."""
    from mmengine.hooks import Hook

    class BackboneLoadedHook(Hook):
        priority = "VERY_HIGH"

        def before_train(self, runner) -> None:
            if resumed is not None:
                verify_resumed(runner.model, Path(resumed))
                return
            verify_backbone_state(backbone_of(runner.model), read_converted(expected_path), check_values=True)
            runner.logger.info(f"backbone: all weights of {expected_path} loaded (verified)")

    return BackboneLoadedHook()


def verify_resumed(model: nn.Module, path: Path) -> None:
    """Every tensor of ``model`` holds the value the Runner file ``path`` saved for it, else TaskFailed."""
    from transfer.records import TaskFailed
    from transfer.backbones.read import read_runner_file

    saved = read_runner_file(path)
    saved = saved.get("state_dict") if isinstance(saved, Mapping) else None
    saved = saved if isinstance(saved, Mapping) else {}
    own = getattr(model, "module", model).state_dict()
    missing = [k for k in own if not isinstance(saved.get(k), Tensor) or saved[k].shape != own[k].shape]
    differ = [k for k in own if k not in missing and not torch.equal(saved[k].to(own[k].device), own[k])]
    if missing or differ:
        raise TaskFailed(f"--resume: {path} restores {len(own) - len(missing) - len(differ)} of the model's {len(own)} "
                         f"tensors (missing or mis-shaped: {len(missing)}, e.g. {missing[:2]}; not loaded: "
                         f"{len(differ)}); a resume restores the whole model or nothing: run without --resume "
                         "to start over")


def register_runner_scheme() -> None:
    """``runner-file://PATH``: read a checkpoint the Runner wrote, as data (never ``weights_only=False``).

    mmengine's Runner saves its message hub (``HistoryBuffer``, numpy scalars) and optimizer, which
    torch >= 2.6 refuses under plain ``weights_only=True``; :func:`transfer.backbones.read.runner_admits`
    names exactly those classes, and anything else the file names stays an inert placeholder.
    """
    from mmengine.runner import CheckpointLoader

    from transfer.backbones.read import read_runner_file

    def load_runner_file(filename: str, map_location=None) -> Any:
        path = filename[len(RUNNER_SCHEME):]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} can not be found.")
        return read_runner_file(path)

    CheckpointLoader.register_scheme(prefixes=RUNNER_SCHEME, loader=load_runner_file, force=True)


def runner_file(path: str | Path) -> str:
    """Mark a Runner-written checkpoint for :func:`register_runner_scheme`'s loader."""
    return RUNNER_SCHEME + str(path)


def build_runner(cfg: Any, converted: Path) -> tuple[Any, Path | None]:
    """mmengine's Runner for ``cfg`` (whose backbone loads ``converted``), with that load verified; with
    ``cfg.resume``, resumed from the Runner's own latest checkpoint, read as data and checked to restore
    the whole model. Returns the Runner and the checkpoint it resumes from (None for a fresh start)."""
    from mmengine.runner import Runner

    from transfer.mmengine_task import init_cpu_group, name_visualizer, resume_point

    register_runner_scheme()
    init_cpu_group(cfg)
    latest = resume_point(cfg)
    if latest is not None:
        cfg.load_from = runner_file(latest)  # read as data: transfer.backbones.read
    name_visualizer(cfg)
    runner = Runner.from_cfg(cfg)
    attach_verification(runner, converted, latest)
    return runner, latest
