"""A ViT checkpoint (timm names, :mod:`transfer.backbones.vit.load`) as detectron2's ViTDet backbone (``modeling/backbone/vit.py``).

detectron2's ``ViT`` has timm's block names; what differs is what it leaves out and adds:

- no class token in the forward pass and no final norm (``cls_token``, ``norm.*`` are unused); the
  stored ``pos_embed`` keeps its class position (``pretrain_use_cls_token=True``), which
  ``get_abs_pos`` drops, and the grid is resampled bicubically to the input as DINO/MAE do;
- no LayerScale: a ViT with LayerScale (DINOv2) is folded exactly, ``gamma·(Wx + b)`` being
  ``(gamma·W)x + gamma·b``, into ``attn.proj`` and ``mlp.fc2``;
- ViTDet's relative positions (``attn.rel_pos_h``/``rel_pos_w``) are *new* tensors: they start at
  zero, as detectron2 initialises them (``rel_pos_zero_init``), and the conversion names them.

Register tokens have no place in ViTDet (one-line refusal). Keys get the prefix of the
``SimpleFeaturePyramid`` that wraps the ViT in ``mask_rcnn_vitdet.py`` (``backbone.net.``).
:func:`to_detectron2_file` is ``python -m transfer.convert --to detectron2`` for a ViT: the same tensors
as a detectron2 pickle, without the relative-position tables (they depend on the config's input size
and windows; detectron2 initialises them at zero, the values the runner's conversion writes).
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import Tensor

from transfer.backbones.info import CheckpointError, CheckpointInfo
from transfer.backbones.vit.load import spec_of

VITDET_PREFIX = "backbone.net."


def to_vitdet(state: Mapping[str, Tensor], info: CheckpointInfo, use_rel_pos: bool, input_size: int,
              window_size: int = 0, window_block_indexes: tuple[int, ...] = (),
              prefix: str = VITDET_PREFIX) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """``(detectron2 ViT state_dict, new tensor names, unused names)`` for a ViT on ``input_size`` px.

    ``use_rel_pos`` adds zero relative-position tables, of the window's size in the blocks of
    ``window_block_indexes`` and of the global grid elsewhere (as detectron2's ``Block`` builds them).
    """
    spec = spec_of(info)
    if spec.reg_tokens or spec.no_embed_class or spec.pre_norm:
        raise CheckpointError(f"checkpoint {info.path} ({info.arch}): ViTDet has no register tokens / pre-norm")
    out: dict[str, Tensor] = {}
    unused = [k for k in state if k == "cls_token" or k.startswith("norm.")]
    for key, value in state.items():
        if key in unused or re.search(r"\.ls[12]\.gamma$", key):
            continue
        out[key] = value.detach().clone()
    for i in range(spec.depth):
        for ls, linear in (("ls1", "attn.proj"), ("ls2", "mlp.fc2")):
            gamma = state.get(f"blocks.{i}.{ls}.gamma")
            if gamma is not None:  # LayerScale folded into the linear layer before it
                out[f"blocks.{i}.{linear}.weight"] = gamma[:, None] * out[f"blocks.{i}.{linear}.weight"]
                out[f"blocks.{i}.{linear}.bias"] = gamma * out[f"blocks.{i}.{linear}.bias"]
    new = []
    if use_rel_pos:
        head_dim = spec.embed_dim // spec.num_heads
        for i in range(spec.depth):
            size = window_size if i in window_block_indexes else input_size // spec.patch_size
            for axis in ("h", "w"):
                key = f"blocks.{i}.attn.rel_pos_{axis}"
                out[key] = torch.zeros(2 * size - 1, head_dim)
                new.append(prefix + key)
    return {prefix + k: v for k, v in out.items()}, new, unused


def vitdet_kwargs(info: CheckpointInfo) -> dict:
    """The ``ViT(...)`` arguments that follow from the checkpoint (the rest come from the config)."""
    spec = spec_of(info)
    return dict(patch_size=spec.patch_size, embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads,
                mlp_ratio=spec.mlp_ratio, qkv_bias=spec.qkv_bias, pretrain_img_size=spec.img_size,
                pretrain_use_cls_token=True)


MAPPING_VERSION = "timm ViT->detectron2 ViTDet v1"


def to_detectron2_file(state: Mapping[str, Tensor], info: CheckpointInfo) -> dict:
    """A detectron2 checkpoint dict (``DetectionCheckpointer`` reads a ``.pkl`` of it) of the ViT, keys
    ``backbone.net.*`` as ViTDet's model names them (no name matching needed: ``matching_heuristics`` off)."""
    converted, _, unused = to_vitdet(state, info, use_rel_pos=False, input_size=info.vit["img_size"])
    return {"model": {k: v.detach().cpu().to(torch.float32).numpy().copy() for k, v in converted.items()},
            "__author__": "MAST transfer.convert (timm ViT -> detectron2 ViTDet)", "matching_heuristics": False,
            "mapping_version": MAPPING_VERSION, "source_path": info.path, "source_sha256": info.sha256,
            "arch": info.arch, "vit": dict(info.vit), "source_backbone": info.backbone,
            "backbone_choice": info.backbone_choice, "unused": unused,
            "new_tensors": "blocks.N.attn.rel_pos_h/w when the config has use_rel_pos (detectron2 inits them at zero)"}
