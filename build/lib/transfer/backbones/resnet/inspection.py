"""``transfer.inspect_checkpoint`` for a ResNet checkpoint: arch, stem, parameters and unused tensors of the
candidate :func:`transfer.backbones.locate` chose (:mod:`transfer.backbones.resnet.load` reads it the same way)."""

from __future__ import annotations

from typing import Any, Mapping

from transfer.backbones.candidates import Candidate, backbone_tensors, unused_groups
from transfer.backbones.info import CheckpointError, Located
from transfer.backbones.resnet.layouts import guess_codebase
from transfer.backbones.resnet.load import (canonicalise, detect_arch, detect_stem, find_stem_padding, saved_configs,
                                            solo_learn_dataset)

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def inspect_resnet(got: Located, report: dict[str, Any]) -> dict[str, Any]:
    """Fill ``report`` (transfer.inspect_checkpoint's dict) for the chosen ResNet; ``error`` set when refused."""
    chosen, obj, path = got.chosen, got.obj, got.path
    report.update(chosen=chosen.name, choice=got.how, codebase=guess_codebase(obj, got.candidates, chosen),
                  layout=chosen.layout)
    try:
        tensors = backbone_tensors(chosen, got.flat)
        report["arch"] = arch = detect_arch(tensors, path)
        report["stem"] = stem = detect_stem(tensors)
        if stem == "cifar":
            report["stem_padding"], report["stem_padding_source"] = find_stem_padding(obj, path, chosen.layout)
            if any(solo_learn_dataset(c) for _, c in saved_configs(obj, path)):
                report["codebase"] = "solo-learn"
        state = canonicalise(tensors, arch, path, stem)
        report["parameters"] = sum(v.numel() for k, v in state.items() if not k.endswith(_BUFFERS))
    except CheckpointError as e:
        report["error"] = str(e)
    report["unused"] = unused(got.flat, got.candidates, chosen)
    return report


def describe_resnet(c: Candidate, flat: Mapping) -> str:
    """A ResNet candidate's architecture as the candidate list shows it."""
    tensors = backbone_tensors(c, flat)
    try:
        return detect_arch(tensors, c.name) + (" (CIFAR stem)" if detect_stem(tensors) == "cifar" else "")
    except CheckpointError:
        return "not a torchvision ResNet"


def unused(flat: Mapping, cands: list[Candidate], chosen: Candidate | None) -> list[dict[str, Any]]:
    """Tensors the tasks do not read, grouped, with the reason (the chosen ResNet's ``fc.*`` is dropped)."""
    return unused_groups(flat, cands, chosen,
                         lambda rest: ("fc.*", "classifier (dropped)") if rest.startswith("fc.") else None)
