"""Read any supported ViT checkpoint into timm's ``VisionTransformer``: the reference ViT.

The ViT twin of :func:`transfer.checkpoints.load_backbone`: :func:`load_vit` finds the ViT
(:mod:`transfer.vit_layouts`), renames it onto timm's names, infers the architecture from the
tensors (:class:`VitSpec`: width, depth, patch size, registers, LayerScale, MLP ratio) and checks
the result against the keys and shapes of the timm model that spec builds: every tensor mapped
exactly once, anything missing, mis-shaped or left over refused in one line, the unused tensors
named. :func:`build_vit` builds the model (optionally at another resolution: the position
embedding is resampled as DINO and MAE do, :func:`resize_pos_embed`); :func:`vit_features` gives
the features each codebase evaluates (:data:`POOLS`), :func:`vit_feature_sets` several of them from one pass.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transfer.checkpoints import CheckpointError, CheckpointInfo, local_checkpoint, read_checkpoint, sha256_file, find_method, \
    find_pretrain_seed
from transfer.layouts import (LayoutError, backbone_tensors, choose, describe, find_candidates, flatten,
                              matches_any)
from transfer.vit_layouts import find_vit_candidates, square_part, to_timm

HEAD_DIM = 64  # every ViT these codebases release (Ti/S/B/L/H, DINOv2 g) uses 64-dim heads
SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge", 1536: "giant"}
POOLS = ("cls", "avg", "cls+avg")
# How each codebase evaluates its frozen ViT (the probes' default --vit-pool).
DEFAULT_POOL = {"DINO": "cls", "iBOT": "cls", "MoCo v3": "cls", "MAE": "avg", "DINOv2": "cls+avg",
                "mmpretrain": "cls", "timm": "cls"}
# DINO's eval_linear (and iBOT's copy of it): ViT-S and smaller concatenate the class tokens of the last 4
# blocks; ViT-B and larger take the last block's class token and average patch token (DINO README).
LINEAR_DEFAULTS = {"DINO", "iBOT"}
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class VitSpec:
    """A ViT's architecture, as read from its tensors."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    img_size: int          # the resolution its position embedding was trained at (grid × patch)
    mlp_ratio: float
    reg_tokens: int = 0
    layer_scale: bool = False
    qkv_bias: bool = True
    no_embed_class: bool = False
    pre_norm: bool = False

    @property
    def arch(self) -> str:
        size = SIZES.get(self.embed_dim, f"d{self.embed_dim}")
        return f"vit_{size}_patch{self.patch_size}" + (f"_reg{self.reg_tokens}" if self.reg_tokens else "") \
            + ("_ls" if self.layer_scale else "")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class VitInfo(CheckpointInfo):
    """:class:`CheckpointInfo` of a ViT: its spec, the unused tensors and the codebase's pooling."""

    family: str = "vit"
    vit: dict = field(default_factory=dict)       # asdict(VitSpec)
    unused: dict = field(default_factory=dict)    # tensor group -> reason
    default_pool: str = "cls"


def infer_spec(state: Mapping[str, Tensor], where: str) -> VitSpec:
    """The :class:`VitSpec` of timm-named tensors (``where`` names the checkpoint in errors)."""
    for key in ("patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.0.mlp.fc1.weight"):
        if key not in state:
            raise CheckpointError(f"checkpoint {where}: ViT tensor {key!r} missing (have {sorted(state)[:6]}...)")
    proj, pos = state["patch_embed.proj.weight"], state["pos_embed"]
    dim, patch = proj.shape[0], proj.shape[2]
    if dim % HEAD_DIM:
        raise CheckpointError(f"checkpoint {where}: width {dim} is not a multiple of {HEAD_DIM} (head size)")
    if "blocks.0.mlp.w12.weight" in state:
        raise CheckpointError(f"checkpoint {where}: SwiGLU MLP (DINOv2 ViT-g) is not supported")
    blocks = sorted({int(m.group(1)) for k in state if (m := _BLOCK.match(k))})
    if blocks != list(range(len(blocks))):
        raise CheckpointError(f"checkpoint {where}: block indices {blocks[:3]}...{blocks[-3:]} are not 0..N-1")
    reg = state["reg_token"].shape[1] if "reg_token" in state else 0
    n = pos.shape[1]
    grid = math.isqrt(square_part(n))
    if n - grid * grid not in (0, 1 + reg):
        raise CheckpointError(f"checkpoint {where}: pos_embed of {n} tokens is neither a square patch grid nor "
                              f"one plus the {1 + reg} class/register tokens")
    return VitSpec(embed_dim=dim, depth=len(blocks), num_heads=dim // HEAD_DIM, patch_size=patch,
                   img_size=grid * patch, mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
                   reg_tokens=reg, layer_scale="blocks.0.ls1.gamma" in state,
                   qkv_bias="blocks.0.attn.qkv.bias" in state, no_embed_class=n == grid * grid,
                   pre_norm="norm_pre.weight" in state)


def build_vit(spec: VitSpec, img_size: int | None = None) -> nn.Module:
    """timm's ``VisionTransformer`` for ``spec`` (no classifier; ``forward_features`` gives the
    final-normed tokens), at ``img_size`` (default: the spec's)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=img_size or spec.img_size, patch_size=spec.patch_size, num_classes=0,
                             global_pool="", embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads,
                             mlp_ratio=spec.mlp_ratio, qkv_bias=spec.qkv_bias,
                             init_values=1e-5 if spec.layer_scale else None, reg_tokens=spec.reg_tokens,
                             no_embed_class=spec.no_embed_class, pre_norm=spec.pre_norm)


def check_state(state: Mapping[str, Tensor], spec: VitSpec, where: str) -> dict[str, Tensor]:
    """``state`` as exactly the keys of ``build_vit(spec)``; missing, mis-shaped, left-over or
    non-finite tensors are refused (one line)."""
    expected = {k: v.shape for k, v in build_vit(spec).state_dict().items()}
    missing = [k for k in expected if k not in state]
    bad = [k for k in expected if k in state and state[k].shape != expected[k]]
    extra = [k for k in state if k not in expected]
    if missing or bad or extra:
        raise CheckpointError(f"checkpoint {where} ({spec.arch}): {len(missing)} missing tensors {missing[:4]}, "
                              f"{len(bad)} mis-shaped {bad[:4]}, {len(extra)} unexpected {extra[:4]}")
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"checkpoint {where} ({spec.arch}): tensor {key} holds NaN/Inf values")
    return {k: state[k].detach().clone().float() for k in expected}


def resize_pos_embed(pos: Tensor, spec: VitSpec, img_size: int) -> Tensor:
    """``pos`` for ``img_size``: the patch grid resampled bicubically (MAE's ``interpolate_pos_embed``,
    DINO's ``interpolate_pos_encoding``), the class/register tokens' positions kept as they are."""
    grid = img_size // spec.patch_size
    if grid == spec.grid:
        return pos
    prefix = pos.shape[1] - spec.grid ** 2
    extra, tokens = pos[:, :prefix], pos[:, prefix:]
    tokens = tokens.reshape(1, spec.grid, spec.grid, -1).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens.float(), size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([extra, tokens.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


def load_state(model: nn.Module, state: Mapping[str, Tensor], spec: VitSpec, img_size: int | None = None) -> nn.Module:
    """Load ``state`` (the spec's resolution) into ``model`` strictly, resampling positions if needed."""
    state = dict(state)
    state["pos_embed"] = resize_pos_embed(state["pos_embed"], spec, img_size or spec.img_size)
    model.load_state_dict(state, strict=True)
    return model


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


def probe_feature_sets(info: "VitInfo", pool: str, last_blocks: int) -> list[FeatureSet]:
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
    def from_state(cls, state: Mapping[str, Tensor], info: "VitInfo", img_size: int,
                   sets: Sequence[FeatureSet]) -> "VitFeatures":
        spec = spec_of(info)
        return cls(load_state(build_vit(spec, img_size), state, spec, img_size), sets)

    def forward(self, x: Tensor) -> dict[FeatureSet, Tensor]:
        return vit_feature_sets(self.model, x, self.sets)


def linear_default(info: "VitInfo") -> tuple[str, int]:
    """``(pool, last blocks)`` of the codebase's own linear evaluation (else its kNN pooling, 1 block)."""
    if info.codebase in LINEAR_DEFAULTS:
        return ("cls", 4) if info.vit["embed_dim"] <= 384 else ("cls+avg", 1)
    return info.default_pool, 1


def guess_vit_codebase(flat: Mapping[str, Tensor], obj: Any, chosen_prefix: str, layout: str,
                       tensors: Mapping[str, Tensor]) -> str:
    """Which codebase most likely wrote the ViT (record, ``transfer.inspect_checkpoint``, default pooling)."""
    top = set(obj) if isinstance(obj, Mapping) else set()
    names = set(tensors)
    if layout == "mmpretrain":
        return "mmpretrain"
    if "register_tokens" in names or any(re.match(r"blocks\.\d+\.\d+\.", k) for k in names) \
            or ("mask_token" in names and "blocks.0.ls1.gamma" in names):
        return "DINOv2"
    if "masked_embed" in names:
        return "iBOT"
    if any(re.search(r"(^|\.)decoder_", k) for k in flat):
        return "MAE"
    if "base_encoder" in chosen_prefix:
        return "MoCo v3"
    if {"teacher", "student"} & top:
        return "DINO"
    return "timm"


def locate_vit(obj: Any, path: Path, backbone: str | None = None):
    """``(flat, candidates, chosen, how)`` of the ViT in a loaded checkpoint; CheckpointError if none."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a state_dict (a dict of tensors)")
    flat = flatten(obj)
    cands = find_vit_candidates(flat)
    resnets = find_candidates(flat)
    if cands and resnets and not (backbone and matches_any(backbone, cands)):
        raise CheckpointError(f"checkpoint {path} holds a ResNet {describe(resnets)} and a Vision Transformer "
                              f"{describe(cands)}; choose one with --backbone NAME")
    if not cands:
        raise CheckpointError(f"checkpoint {path}: no ViT weights found (no 'patch_embed.proj.weight' or "
                              f"'patch_embed.projection.weight'; top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    try:
        chosen, how = choose(cands, backbone, f"checkpoint {path}")
    except LayoutError as e:
        raise CheckpointError(str(e)) from None
    return flat, cands, chosen, how


def load_vit(path: str | Path, backbone: str | None = None) -> tuple[dict[str, Tensor], VitInfo]:
    """Load ``path`` and return ``(timm VisionTransformer state_dict, info)`` (``info.vit``: the spec)."""
    path, provenance = local_checkpoint(path)
    obj = read_checkpoint(path)
    flat, cands, chosen, how = locate_vit(obj, path, backbone)
    where = f"{path} [{chosen.name}]" if len(cands) > 1 else str(path)
    raw = backbone_tensors(chosen, flat)
    try:
        renamed, unused = to_timm(raw, chosen.layout)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {where}: {e}") from None
    spec = infer_spec(renamed, where)
    state = check_state(renamed, spec, where)
    codebase = guess_vit_codebase(flat, obj, chosen.prefix, chosen.layout, raw)
    info = VitInfo(path=str(path if provenance else path.resolve()), sha256=sha256_file(path), arch=spec.arch, method=find_method(obj, path),
                   pretrain_seed=find_pretrain_seed(obj, path), source_format=chosen.name or "timm", run_dir=None,
                   backbone=chosen.prefix, backbone_choice=how, candidates=tuple(c.name for c in cands),
                   layout=chosen.layout, codebase=codebase, vit=asdict(spec), unused=_group(unused, chosen.prefix),
                   default_pool=DEFAULT_POOL.get(codebase, "cls"), **provenance)
    return state, info


def _group(unused: Mapping[str, str], prefix: str) -> dict[str, str]:
    groups: dict[str, str] = {}
    for name, why in unused.items():
        head = name.split(".")[0]
        groups[f"{prefix}{head}" + (".*" if "." in name else "")] = why
    return groups


def spec_of(info: VitInfo) -> VitSpec:
    return VitSpec(**info.vit)
