"""Where the ResNet sits in a checkpoint, whichever SSL codebase wrote it.

A candidate ResNet is found by its stem, a 4-D conv weight with 3 input channels:

- ``P + conv1.weight``: torchvision names, which torchvision, timm, mmcls/mmpretrain/mmselfsup
  (``ResNet(style='pytorch')``: ``bn1``, ``downsample.0/.1`` like torchvision), VISSL
  (``_feature_blocks.*``), solo-learn, MoCo, DINO and BYOL codebases all use;
- ``P + 0.weight`` with ``P + 4.0.conv1.weight``: lightly's ``nn.Sequential(*list(resnet.children())[:-1])``,
  whose child indices 0, 1, 4-7 are conv1, bn1, layer1-4 (2, 3 and 8 are relu, maxpool, avgpool:
  no tensors; :data:`transfer.backbones.candidates.SEQUENTIAL_CHILDREN`).

Merging identical copies and choosing one is shared with every family (:mod:`transfer.backbones.candidates`).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from torch import Tensor

from transfer.backbones.candidates import Candidate, candidates_at


def _is_stem(t: Tensor) -> bool:
    return t.ndim == 4 and t.shape[1] == 3


def find_candidates(flat: Mapping[str, Tensor]) -> list[Candidate]:
    """Every ResNet in ``flat`` (identical ones merged), in key order."""
    found: list[tuple[str, str]] = []
    for key, t in flat.items():
        p = key[: -len("conv1.weight")]
        if key.endswith("conv1.weight") and (p == "" or p.endswith(".")) and _is_stem(t) \
                and not re.search(r"layer\d\.\d+\.$", p):
            found.append((p, "torchvision"))
        elif key.endswith("0.weight") and _is_stem(t):
            p = key[: -len("0.weight")]
            if (p == "" or p.endswith(".")) and f"{p}4.0.conv1.weight" in flat and f"{p}1.running_mean" in flat:
                found.append((p, "sequential"))
    return candidates_at(found, flat)


def guess_codebase(obj: Any, cands: list[Candidate], chosen: Candidate) -> str:
    """Which codebase most likely wrote ``obj`` (for the record and ``transfer.inspect_checkpoint`` only)."""
    top = set(obj) if isinstance(obj, Mapping) else set()
    names = " ".join(p for c in cands for p in (c.prefix, *c.aliases))
    if "classy_state_dict" in top:
        return "VISSL"
    if "meta" in top and "state_dict" in top:
        return "mmselfsup/mmpretrain (mmengine)"
    if "momentum_backbone" in names:
        return "solo-learn"
    if re.search(r"(online|target)_(network|encoder|net)", names):
        return "BYOL"
    if chosen.layout == "sequential" or "backbone_momentum" in names:
        return "lightly"
    if "pytorch-lightning_version" in top or "global_step" in top:
        return "Lightning"
    if {"teacher", "student"} & top:
        return "DINO"
    if "encoder_q" in names:
        return "MoCo"
    if "arch" in top and "state_dict" in top:
        return "timm"
    if "config" in top and "model" in top:
        return "MAST"
    return "torchvision state_dict" if chosen.prefix == "" else "state_dict"
