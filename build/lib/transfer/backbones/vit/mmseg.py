"""A ViT checkpoint (timm names, :mod:`transfer.backbones.vit.load`) into mmseg's ``MAE`` backbone (the MAE/BEiT
UperNet protocol mmseg ships: ``configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py``).

mmseg's ``MAE`` is BEiT's block with a relative position bias table (zero-initialised by MAE) and
LayerScale ``gamma_1``/``gamma_2``. A plain ViT maps onto it exactly when the tables are zero and
the gammas one (a ViT with LayerScale keeps its own): those are the *new* tensors, recorded. The
class-token position and the patch grid are resampled to the config's ``img_size`` as DINO/MAE do
(:func:`transfer.backbones.vit.load.resize_pos_embed`, timm's resampling). The file is written as ``{"state_dict": ...}`` without a
prefix because ``MAE.init_weights`` loads the file into the backbone itself (``strict=False``):
:mod:`transfer.backbones.mmengine_weights` then verifies keys, shapes and values as for ResNets.
:func:`to_mmseg_file_dict` is ``python -m transfer.convert --to mmseg`` for a ViT (an MAE backbone at the
checkpoint's own width, depth and resolution).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from transfer.backbones.info import BackboneMismatch, CheckpointInfo
from transfer.backbones.vit.layouts import OPENMMLAB_SHARED, rename_rules
from transfer.backbones.vit.load import resize_pos_embed, spec_of

VIT_TYPES = ("MAE", "mmseg.MAE")
# mmseg's MAE (BEiT's block): LayerScale as gamma_1/gamma_2, the final norm norm1; the rest as mmpretrain's.
TIMM_TO_MAE = rename_rules(OPENMMLAB_SHARED + (("blocks.N.ls1.gamma", "layers.N.gamma_1"),
                                               ("blocks.N.ls2.gamma", "layers.N.gamma_2"), ("norm.", "norm1.")),
                           to_timm=False)


def check_vit_cfg(model: dict, info: CheckpointInfo, config_name: str) -> list[str]:
    """Refuse a model config whose backbone cannot hold the ViT of ``info`` (one line); returns notes.

    As for ResNet depths, a config written for another *width* (the demo's ViT-Tiny) is adapted when
    its neck and heads read that width: width, heads, neck and head ``in_channels`` are set for the
    checkpoint. Patch size, MLP ratio and depth (``out_indices``, layer decay) must match.
    """
    spec, backbone = spec_of(info), model["backbone"]
    where = f"config {config_name}: model.backbone"
    if str(backbone.get("type")) not in VIT_TYPES:
        raise BackboneMismatch(f"{where}.type={backbone.get('type')!r} cannot hold a ViT checkpoint ({info.arch}); "
                               "use a ViT config (type='MAE', e.g. upernet_mae_vit-b16_ade20k_512x512_160k.py)")
    if spec.reg_tokens or spec.no_embed_class or spec.pre_norm:
        raise BackboneMismatch(f"{where}: mmseg's MAE backbone has no register tokens / pre-norm; checkpoint "
                               f"{info.path} is a {info.arch} with {spec.reg_tokens} registers")
    have = dict(patch_size=backbone.get("patch_size", 16), mlp_ratio=float(backbone.get("mlp_ratio", 4)),
                num_layers=backbone.get("num_layers", 12))
    want = dict(patch_size=spec.patch_size, mlp_ratio=spec.mlp_ratio, num_layers=spec.depth)
    if have != want:
        raise BackboneMismatch(f"{where} {have} does not match the checkpoint's {info.arch} {want}; use a config "
                               "written for that ViT")
    backbone["mlp_ratio"] = int(spec.mlp_ratio)
    old = int(backbone.get("embed_dims", 768))
    if old == spec.embed_dim:
        backbone["num_heads"] = spec.num_heads
        return []
    readers = [model.get("neck") or {}, model.get("decode_head") or {}, model.get("auxiliary_head") or {}]
    widths = [r.get("embed_dim", r.get("in_channels")) for r in readers if r]
    if any((w if isinstance(w, (list, tuple)) else [w]) != [old] * (len(w) if isinstance(w, (list, tuple)) else 1)
           for w in widths):
        raise BackboneMismatch(f"checkpoint {info.path} is a {info.arch} (width {spec.embed_dim}) but {where}."
                               f"embed_dims={old} and the neck/heads read {widths}; use a config for that width")
    backbone.update(embed_dims=spec.embed_dim, num_heads=spec.num_heads)
    for r in readers:
        for key in ("embed_dim", "in_channels"):
            if key in r:
                r[key] = [spec.embed_dim] * len(r[key]) if isinstance(r[key], (list, tuple)) else spec.embed_dim
    return [f"model.backbone.embed_dims {old} -> {spec.embed_dim}, num_heads -> {spec.num_heads}, neck and head "
            "widths to match (from the checkpoint)"]


def to_mae_state(state: Mapping[str, Tensor], info: CheckpointInfo, template: Mapping[str, Tensor],
                 img_size: int) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """``(mmseg MAE state_dict, new tensor names, unused timm names)``; every template key filled once.

    ``template`` is the built backbone's own ``state_dict`` (its shapes and the constant
    ``relative_position_index`` buffers).
    """
    spec = spec_of(info)
    out: dict[str, Tensor] = {}
    unused = []
    for name, value in state.items():
        new = next((re.sub(p, r, name) for p, r in TIMM_TO_MAE if re.search(p, name)), name)
        if new == "pos_embed":
            value = resize_pos_embed(value, spec, img_size)
        if new not in template:
            unused.append(name)
            continue
        out[new] = value.detach().clone()
    new_tensors = []
    for key, value in template.items():
        if key in out:
            continue
        if key.endswith("relative_position_index"):
            out[key] = value.clone()  # a constant index buffer, not a weight
        elif key.endswith("relative_position_bias_table"):  # zero: no relative bias, as MAE initialises it
            out[key] = torch.zeros_like(value)
            new_tensors.append(key)
        elif re.search(r"\.gamma_[12]$", key):  # one: no LayerScale
            out[key] = torch.ones_like(value)
            new_tensors.append(key)
        else:
            raise BackboneMismatch(f"checkpoint {info.path} ({info.arch}) has no tensor for mmseg's MAE {key}")
    bad = [k for k in out if out[k].shape != template[k].shape]
    if bad:
        raise BackboneMismatch(f"checkpoint {info.path} ({info.arch}): {len(bad)} tensors mis-shaped for mmseg's "
                               f"MAE, e.g. {bad[0]} {tuple(out[bad[0]].shape)} vs {tuple(template[bad[0]].shape)}")
    return out, new_tensors, unused


def build_backbone(backbone_cfg: Mapping[str, Any]) -> torch.nn.Module:
    """The config's backbone, without its pretrained init (for the template and the tests)."""
    from transfer.engines import require_mmseg

    require_mmseg()  # mmcv-lite: the mmcv.ops shim before mmseg's models import
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    cfg = {k: v for k, v in dict(backbone_cfg).items() if k not in ("init_cfg", "pretrained")}
    cfg["type"] = str(cfg["type"]).removeprefix("mmseg.")
    return MODELS.build(cfg)


def to_mmseg_vit_file(state: Mapping[str, Tensor], info: CheckpointInfo, backbone_cfg: Mapping[str, Any],
                      out_dir: Path) -> tuple[Path, list[str], list[str]]:
    """Write the converted backbone to ``out_dir/backbone_mmseg.pth``: ``(path, new tensors, unused)``."""
    from plumbing.atomic import torch_save_atomic

    img = backbone_cfg.get("img_size", 224)
    img_size = int(img[0] if isinstance(img, (tuple, list)) else img)
    template = build_backbone(backbone_cfg).state_dict()
    converted, new, unused = to_mae_state(state, info, template, img_size)
    path = Path(out_dir) / "backbone_mmseg.pth"
    torch_save_atomic(path, {"state_dict": converted})
    return path, new, unused


def mae_cfg(info: CheckpointInfo) -> dict:
    """mmseg's ``MAE`` backbone for the ViT of ``info`` at its own resolution (every block an output)."""
    spec = spec_of(info)
    return dict(type="MAE", img_size=(spec.img_size, spec.img_size), patch_size=spec.patch_size,
                embed_dims=spec.embed_dim, num_layers=spec.depth, num_heads=spec.num_heads,
                mlp_ratio=int(spec.mlp_ratio), out_indices=list(range(spec.depth)), init_values=1.0,
                norm_cfg=dict(type="LN", eps=1e-6))


def to_mmseg_file_dict(state: Mapping[str, Tensor], info: CheckpointInfo) -> dict:
    """``{"state_dict": mmseg MAE state_dict, "meta": ...}`` of the ViT (``MAE.init_weights`` reads the
    ``state_dict`` unprefixed); refused in one line when mmseg's MAE cannot hold it (registers)."""
    cfg = mae_cfg(info)
    check_vit_cfg({"backbone": dict(cfg)}, info, "mmseg MAE (from the checkpoint)")
    converted, new, unused = to_mae_state(state, info, build_backbone(cfg).state_dict(), spec_of(info).img_size)
    meta = {"source_path": info.path, "source_sha256": info.sha256, "arch": info.arch,
            "source_backbone": info.backbone, "new_tensors": new, "unused": unused,
            "mmseg_backbone": {k: v for k, v in cfg.items() if k not in ("norm_cfg", "out_indices")}}
    return {"state_dict": converted, "meta": meta}
