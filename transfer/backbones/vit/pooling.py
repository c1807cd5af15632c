"""The features each codebase evaluates from a frozen ViT (:data:`POOLS`), several sets from one forward pass.

:func:`vit_features` gives one pooling; :func:`vit_feature_sets` every pooling a probe task asks for from
one pass; :class:`VitFeatures` is the probes' frozen network (timm's ViT, :mod:`transfer.backbones.vit.load`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from transfer.backbones.info import CheckpointInfo
from transfer.backbones.vit.load import build_vit, load_state, spec_of

POOLS = ("cls", "avg", "cls+avg")
# DINO's eval_linear (and iBOT's copy of it): ViT-S and smaller concatenate the class tokens of the last 4
# blocks; ViT-B and larger take the last block's class token and average patch token (DINO README).
LINEAR_DEFAULTS = {"DINO", "iBOT"}


FeatureSet = tuple[str, int]  # (pool, last blocks): one feature a probe asks for, e.g. ("cls", 4)


def vit_features(model: nn.Module, x: Tensor, pool: str, last_blocks: int = 1) -> Tensor:
    """Frozen features of images ``x``.

    ``cls``: the class token after the final norm (DINO, iBOT, MoCo v3); ``avg``: the mean of the
    normed patch tokens (MAE's global pool); ``cls+avg``: both concatenated (DINOv2's linear
    head). ``last_blocks`` > 1 concatenates the class token of each of the last blocks, each
    normed (DINO ``eval_linear``'s ``n_last_blocks``; with ``cls+avg`` the patch average of the
    last block is appended, its ``avgpool_patchtokens``).
    """
    return vit_feature_sets(model, x, [(pool, last_blocks)])[(pool, last_blocks)]


def vit_feature_sets(model: nn.Module, x: Tensor, sets: Sequence[FeatureSet]) -> dict[FeatureSet, Tensor]:
    """Every feature set of ``sets`` (:func:`vit_features`' ``(pool, last_blocks)``) from one forward pass.

    The deepest set decides the pass: the normed outputs of its last blocks, whose last one is the
    final-norm output (a last-block set needs nothing else); one block only: ``forward_features``.
    """
    for pool, last_blocks in sets:
        if pool not in POOLS or last_blocks < 1:
            raise ValueError(f"--vit-pool {pool!r} / --vit-last-blocks {last_blocks}: expected one of {POOLS} and >= 1")
    deepest = max(n for _, n in sets)
    if deepest > len(model.blocks):
        raise ValueError(f"--vit-last-blocks {deepest}: the ViT has only {len(model.blocks)} blocks")
    if deepest > 1:
        outs = model.get_intermediate_layers(x, n=deepest, return_prefix_tokens=True, norm=True)
        cls_tokens, patches = [o[1][:, 0] for o in outs], outs[-1][0]
    else:
        tokens = model.forward_features(x)
        cls_tokens, patches = [tokens[:, 0]], tokens[:, model.num_prefix_tokens:]
    avg = patches.mean(dim=1)
    out = {}
    for pool, last_blocks in sets:
        cls = torch.cat(cls_tokens[-last_blocks:], dim=-1) if last_blocks > 1 else cls_tokens[-1]
        out[(pool, last_blocks)] = cls if pool == "cls" else avg if pool == "avg" else torch.cat([cls, avg], dim=-1)
    return out


def feature_width(embed_dim: int, pool: str, last_blocks: int = 1) -> int:
    """Width of :func:`vit_features`' output: ``last_blocks`` class tokens, one patch average, or both."""
    return embed_dim * {"cls": last_blocks, "avg": 1, "cls+avg": last_blocks + 1}[pool]


def probe_feature_sets(info: CheckpointInfo, pool: str, last_blocks: int) -> list[FeatureSet]:
    """The feature sets one pass computes for a probe asking for ``(pool, last_blocks)``, that one first.

    Also every pooling of the last block (kNN and few-shot take the codebase's, a user may ask for
    another) and the codebase's linear default (DINO ViT-S: the class tokens of the last 4 blocks), so
    that the suite's next probe task on the same images finds its features in the cache.
    """
    others = [(p, 1) for p in POOLS] + [linear_default(info)]
    depth = info.vit.get("depth", 1)  # a ViT shallower than the linear default: that set is left to its task
    return list(dict.fromkeys([(pool, last_blocks), *(s for s in others if s[1] <= depth)]))


class VitFeatures(nn.Module):
    """timm's ViT whose forward gives every feature set of ``sets`` from one pass (the probes' frozen network)."""

    def __init__(self, model: nn.Module, sets: Sequence[FeatureSet]) -> None:
        super().__init__()
        if not sets:
            raise ValueError("VitFeatures: no feature set asked for")
        self.model, self.sets = model, list(sets)

    @classmethod
    def from_state(cls, state: Mapping[str, Tensor], info: CheckpointInfo, img_size: int,
                   sets: Sequence[FeatureSet]) -> "VitFeatures":
        spec = spec_of(info)
        return cls(load_state(build_vit(spec, img_size), state, spec, img_size), sets)

    def forward(self, x: Tensor) -> dict[FeatureSet, Tensor]:
        return vit_feature_sets(self.model, x, self.sets)


def linear_default(info: CheckpointInfo) -> tuple[str, int]:
    """``(pool, last blocks)`` of the codebase's own linear evaluation (else its kNN pooling, 1 block)."""
    if info.codebase in LINEAR_DEFAULTS:
        return ("cls", 4) if info.vit["embed_dim"] <= 384 else ("cls+avg", 1)
    return info.default_pool, 1


