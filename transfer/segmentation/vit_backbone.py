"""A ViT checkpoint (timm names, :mod:`transfer.vit`) into mmseg's ``MAE`` backbone (the MAE/BEiT
UperNet protocol mmseg ships: ``configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py``).

mmseg's ``MAE`` is BEiT's block with a relative position bias table (zero-initialised by MAE) and
LayerScale ``gamma_1``/``gamma_2``. A plain ViT maps onto it exactly when the tables are zero and
the gammas one (a ViT with LayerScale keeps its own): those are the *new* tensors, recorded. The
class-token position and the patch grid are resampled to the config's ``img_size`` as DINO/MAE do
(:func:`transfer.vit.resize_pos_embed`). The file is written as ``{"state_dict": ...}`` without a
prefix because ``MAE.init_weights`` loads the file into the backbone itself (``strict=False``):
:mod:`transfer.segmentation.backbone` then verifies keys, shapes and values as for ResNets.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from transfer.segmentation.backbone import BackboneMismatch
from transfer.vit import VitInfo, resize_pos_embed, spec_of

VIT_TYPES = ("MAE", "mmseg.MAE")
TIMM_TO_MAE = (
    (r"^patch_embed\.proj\.", "patch_embed.projection."),
    (r"^blocks\.(\d+)\.norm1\.", r"layers.\1.ln1."),
    (r"^blocks\.(\d+)\.norm2\.", r"layers.\1.ln2."),
    (r"^blocks\.(\d+)\.attn\.(qkv|proj)\.", r"layers.\1.attn.\2."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"layers.\1.ffn.layers.0.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"layers.\1.ffn.layers.1."),
    (r"^blocks\.(\d+)\.ls1\.gamma$", r"layers.\1.gamma_1"),
    (r"^blocks\.(\d+)\.ls2\.gamma$", r"layers.\1.gamma_2"),
    (r"^norm\.", "norm1."),
)


def check_vit_cfg(backbone: dict, info: VitInfo, config_name: str) -> None:
    """Refuse a backbone config that cannot hold the ViT of ``info`` (one line)."""
    spec = spec_of(info)
    where = f"config {config_name}: model.backbone"
    if str(backbone.get("type")) not in VIT_TYPES:
        raise BackboneMismatch(f"{where}.type={backbone.get('type')!r} cannot hold a ViT checkpoint ({info.arch}); "
                               "use a ViT config (type='MAE', e.g. upernet_mae_vit-b16_ade20k_512x512_160k.py)")
    if spec.reg_tokens or spec.no_embed_class or spec.pre_norm:
        raise BackboneMismatch(f"{where}: mmseg's MAE backbone has no register tokens / pre-norm; checkpoint "
                               f"{info.path} is a {info.arch} with {spec.reg_tokens} registers")
    want = dict(embed_dims=spec.embed_dim, num_heads=spec.num_heads, patch_size=spec.patch_size)
    wrong = {k: backbone.get(k) for k, v in want.items() if backbone.get(k, v) != v}
    if wrong or float(backbone.get("mlp_ratio", 4)) != spec.mlp_ratio:
        raise BackboneMismatch(f"{where} {wrong or {'mlp_ratio': backbone.get('mlp_ratio')}} does not match the "
                               f"checkpoint's {info.arch} ({want}, mlp_ratio {spec.mlp_ratio}); use a config "
                               "written for that ViT")
    if int(backbone.get("num_layers", spec.depth)) != spec.depth:
        raise BackboneMismatch(f"{where}.num_layers={backbone.get('num_layers')}, the checkpoint has {spec.depth} "
                               "blocks (out_indices and layer decay follow the depth): use a config for that depth")
    backbone["num_layers"], backbone["mlp_ratio"] = spec.depth, int(spec.mlp_ratio)


def to_mae_state(state: Mapping[str, Tensor], info: VitInfo, template: Mapping[str, Tensor],
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


def to_mmseg_vit_file(state: Mapping[str, Tensor], info: VitInfo, backbone_cfg: Mapping[str, Any],
                      out_dir: Path) -> tuple[Path, list[str], list[str]]:
    """Write the converted backbone to ``out_dir/backbone_mmseg.pth``: ``(path, new tensors, unused)``."""
    from mast.atomic import torch_save_atomic

    img = backbone_cfg.get("img_size", 224)
    img_size = int(img[0] if isinstance(img, (tuple, list)) else img)
    template = build_backbone(backbone_cfg).state_dict()
    converted, new, unused = to_mae_state(state, info, template, img_size)
    path = Path(out_dir) / "backbone_mmseg.pth"
    torch_save_atomic(path, {"state_dict": converted})
    return path, new, unused
