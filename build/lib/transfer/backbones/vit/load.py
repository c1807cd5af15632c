"""A ViT candidate (:func:`transfer.backbones.load` found and chose it) as timm's ``VisionTransformer``: the reference ViT.

:func:`from_located` renames it onto timm's names (:mod:`transfer.backbones.vit.layouts`), infers the
architecture from the tensors (:class:`VitSpec`: width, depth, patch size, registers, LayerScale, MLP
ratio) and checks the result against the keys and shapes of the timm model that spec builds: every
tensor mapped exactly once, anything missing, mis-shaped or left over refused in one line, the unused
tensors named. :func:`build_vit` builds the model; :func:`load_state` loads it at another resolution,
the position embedding resampled by timm's ``resample_abs_pos_embed`` as DINO and MAE do.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from transfer.backbones.candidates import backbone_tensors
from transfer.backbones.info import CheckpointError, CheckpointInfo, Located, find_method, find_pretrain_seed, run_dir_of
from transfer.backbones.vit.layouts import square_part, to_timm

HEAD_DIM = 64  # every ViT these codebases release (Ti/S/B/L/H, DINOv2 g) uses 64-dim heads
SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge", 1536: "giant"}
# How each codebase evaluates its frozen ViT (the probes' default --vit-pool).
DEFAULT_POOL = {"DINO": "cls", "iBOT": "cls", "MoCo v3": "cls", "MAE": "avg", "DINOv2": "cls+avg",
                "mmpretrain": "cls", "timm": "cls"}
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
    """``pos`` for ``img_size``: timm's ``resample_abs_pos_embed`` (bicubic on the patch grid, no antialiasing,
    as MAE's ``interpolate_pos_embed`` and DINO's ``interpolate_pos_encoding``), class/register positions kept."""
    from timm.layers import resample_abs_pos_embed

    grid = img_size // spec.patch_size
    if grid == spec.grid:
        return pos
    return resample_abs_pos_embed(pos.float(), new_size=[grid, grid], old_size=[spec.grid, spec.grid],
                                  num_prefix_tokens=pos.shape[1] - spec.grid ** 2, antialias=False)


def load_state(model: nn.Module, state: Mapping[str, Tensor], spec: VitSpec, img_size: int | None = None) -> nn.Module:
    """Load ``state`` (the spec's resolution) into ``model`` strictly, resampling positions if needed."""
    state = dict(state)
    state["pos_embed"] = resize_pos_embed(state["pos_embed"], spec, img_size or spec.img_size)
    model.load_state_dict(state, strict=True)
    return model


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


def from_located(got: Located) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """``(timm VisionTransformer state_dict, info)`` of the ViT :func:`transfer.backbones.locate` chose
    (``info.vit``: its :class:`VitSpec`)."""
    chosen, path, obj = got.chosen, got.path, got.obj
    raw = backbone_tensors(chosen, got.flat)
    try:
        renamed, unused = to_timm(raw, chosen.layout)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {got.where}: {e}") from None
    spec = infer_spec(renamed, got.where)
    state = check_state(renamed, spec, got.where)
    codebase = guess_vit_codebase(got.flat, obj, chosen.prefix, chosen.layout, raw)
    info = CheckpointInfo(path=str(path if got.provenance else path.resolve()), sha256=got.sha256, arch=spec.arch,
                          method=find_method(obj, path), pretrain_seed=find_pretrain_seed(obj, path),
                          source_format=chosen.name or "timm", run_dir=run_dir_of(path), family="vit",
                          backbone=chosen.prefix, backbone_choice=got.how,
                          candidates=tuple(c.name for c in got.candidates), layout=chosen.layout, codebase=codebase,
                          vit=asdict(spec), unused=_group(unused, chosen.prefix),
                          default_pool=DEFAULT_POOL.get(codebase, "cls"), **got.provenance)
    return state, info


def _group(unused: Mapping[str, str], prefix: str) -> dict[str, str]:
    groups: dict[str, str] = {}
    for name, why in unused.items():
        head = name.split(".")[0]
        groups[f"{prefix}{head}" + (".*" if "." in name else "")] = why
    return groups


def spec_of(info: CheckpointInfo) -> VitSpec:
    """The :class:`VitSpec` a ViT's info holds."""
    return VitSpec(**info.vit)
