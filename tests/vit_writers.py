"""Write ViT checkpoints the way each codebase saves them, from a timm model (random weights).

Names follow each codebase's own code: DINO ``main_dino.py`` (``student``/``teacher`` with
``backbone.``/``head.``, the student DDP-wrapped), iBOT (same, plus ``backbone.masked_embed``),
MAE ``main_pretrain.py`` (``model`` with ``mask_token`` and ``decoder_*``), DINOv2 hub files
(``register_tokens`` outside the position embedding, ``mask_token``) and training files
(``blocks.<chunk>.<index>``), MoCo v3 ``main_moco.py`` (``state_dict`` with
``module.base_encoder``/``module.momentum_encoder``/``module.predictor``), mmpretrain
``VisionTransformer`` (``layers.N.ln1``, ``ffn.layers.0.0``, ``attn.gamma1``), timm's
``train.py`` (``state_dict`` + ``arch``). The rename tables here are written independently of
:mod:`transfer.backbones.vit.layouts`, so that a wrong table there fails the tests.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor

MMPRETRAIN = (("patch_embed.proj.", "patch_embed.projection."), (".norm1.", ".ln1."), (".norm2.", ".ln2."),
              (".mlp.fc1.", ".ffn.layers.0.0."), (".mlp.fc2.", ".ffn.layers.1."), (".ls1.gamma", ".attn.gamma1.weight"),
              (".ls2.gamma", ".ffn.gamma2.weight"))


def timm_vit(patch: int, img: int, reg: int = 0, ls: bool = False, seed: int = 0, depth: int = 12, dim: int = 192):
    """A random timm ViT (eval mode); DINOv2-style (``no_embed_class``) when it has registers."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(img_size=img, patch_size=patch, num_classes=0, global_pool="", embed_dim=dim,
                              depth=depth, num_heads=dim // 64, init_values=1e-5 if ls else None, reg_tokens=reg,
                              no_embed_class=reg > 0)
    with torch.no_grad():  # timm zero-inits some tensors; make every one of them matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def _head(dim: int) -> dict:
    return {"head.mlp.0.weight": torch.randn(32, dim), "head.last_layer.weight_g": torch.ones(1, 32)}


def dino(teacher: dict, student: dict) -> dict:
    return {"teacher": {**_prefixed(teacher, "backbone."), **_head(192)},
            "student": {**_prefixed(student, "module.backbone."), **_prefixed(_head(192), "module.")},
            "epoch": 3, "args": argparse.Namespace(arch="vit_tiny"), "dino_loss": {"center": torch.zeros(1, 32)}}


def ibot(teacher: dict, student: dict) -> dict:
    obj = dino(teacher, student)
    obj["teacher"]["backbone.masked_embed"] = torch.zeros(1, 192)
    obj["student"]["module.backbone.masked_embed"] = torch.zeros(1, 192)
    return obj


def mae(encoder: dict) -> dict:
    decoder = {"mask_token": torch.zeros(1, 1, 128), "decoder_embed.weight": torch.randn(128, 192),
               "decoder_pos_embed": torch.zeros(1, 17, 128), "decoder_blocks.0.norm1.weight": torch.ones(128),
               "decoder_norm.weight": torch.ones(128), "decoder_pred.weight": torch.randn(768, 128)}
    return {"model": {**encoder, **decoder}, "epoch": 399, "args": argparse.Namespace(model="mae_vit_tiny"),
            "optimizer": {"state": {}, "param_groups": []}}


def dinov2(state: dict, chunks: int = 0) -> dict:
    """DINOv2's own names: the class token's position inside ``pos_embed``, ``register_tokens`` outside."""
    out = {k: v for k, v in state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    if "reg_token" in state:
        pos_cls = torch.randn(1, 1, state["cls_token"].shape[-1]) * 0.02
        out["register_tokens"] = state["reg_token"]
        out["cls_token"] = state["cls_token"] - pos_cls
        out["pos_embed"] = torch.cat([pos_cls, state["pos_embed"]], dim=1)
    else:
        out["cls_token"], out["pos_embed"] = state["cls_token"], state["pos_embed"]
    out["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    if chunks:
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        per = depth // chunks
        out = {(f"blocks.{int(k.split('.')[1]) // per}.{k[len('blocks.'):]}" if k.startswith("blocks.") else k): v
               for k, v in out.items()}
        return {"model": {**_prefixed(out, "teacher.backbone."), "teacher.dino_head.mlp.0.weight": torch.randn(8, 192)},
                "iteration": 1249}
    return out


def mocov3(base: dict, momentum: dict) -> dict:
    head = {"head.0.weight": torch.randn(64, 192), "head.1.running_mean": torch.zeros(64)}
    state = {**_prefixed({**base, **head}, "module.base_encoder."),
             **_prefixed({**momentum, **head}, "module.momentum_encoder."),
             "module.predictor.0.weight": torch.randn(64, 64)}
    return {"epoch": 300, "arch": "vit_small", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}


def mmpretrain(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        name = k.replace("blocks.", "layers.", 1) if k.startswith("blocks.") else k
        for old, new in MMPRETRAIN:
            name = name.replace(old, new)
        out["backbone." + ("ln1." + name[len("norm."):] if name.startswith("norm.") else name)] = v
    out["head.layers.head.weight"] = torch.randn(10, 192)
    return {"meta": {"mmpretrain_version": "1.2.0", "epoch": 300}, "state_dict": out}


def timm_train(state: dict) -> dict:
    return {"epoch": 10, "arch": "vit_tiny_patch16_224", "state_dict": {**state, "head.weight": torch.randn(10, 192)},
            "version": 2}


def swap_blocks(state: dict, a: int = 0, b: int = 1) -> dict:
    """``state`` with blocks ``a`` and ``b`` exchanged: a wrong mapping the checks must catch."""
    out = dict(state)
    for k, v in state.items():
        for x, y in ((a, b), (b, a)):
            if k.startswith(f"blocks.{x}."):
                out[f"blocks.{y}." + k[len(f"blocks.{x}."):]] = v
    return out


def features(model, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model.forward_features(x)
