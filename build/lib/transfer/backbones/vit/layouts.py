"""Where the Vision Transformer sits in a checkpoint, and its tensors under timm's names.

The ResNet path (:mod:`transfer.backbones.resnet.layouts`) finds a backbone by its stem; a ViT is found by its patch
embedding, a 4-D conv weight with 3 input channels:

- ``P + patch_embed.proj.weight``: timm's names, which timm, DINO, iBOT, MAE, DINOv2 and MoCo v3
  (its ``vits.py`` subclasses timm's ``VisionTransformer``) all keep (layout ``"timm"``);
- ``P + patch_embed.projection.weight``: mmpretrain's ``VisionTransformer`` (``layers.N.ln1``,
  ``attn.qkv``, ``ffn.layers.0.0``/``ffn.layers.1``, ``attn.gamma1``/``ffn.gamma2`` LayerScale,
  final norm ``ln1``; layout ``"mmpretrain"``).

Which candidate is taken (``--backbone``, the only one, DINO's teacher, MoCo v3's ``base_encoder``
over its ``momentum_encoder``) is decided exactly as for ResNets (:func:`transfer.backbones.candidates.choose`).
:func:`to_timm` then renames the chosen tensors onto timm's ``VisionTransformer`` (each tensor
once) and names every tensor it does not use, with the reason: a pretraining-only mask token (MAE,
DINOv2 ``mask_token``, iBOT ``masked_embed``), MAE's decoder, a classifier/projection ``head``.
DINOv2's training checkpoints chunk the blocks (``blocks.C.N.``, N the global index) and keep
``register_tokens`` outside the position embedding: the chunks are renumbered, and the registers go
through timm's own DINOv2 conversion (``_convert_dinov2``, what ``checkpoint_filter_fn`` runs for a
DINOv2 file: ``reg_token``, the class token's position folded into ``cls_token``, ``no_embed_class``).
"""

from __future__ import annotations

import re
from typing import Mapping

from torch import Tensor

from transfer.backbones.candidates import Candidate, candidates_at

ANCHORS = {"patch_embed.proj.weight": "timm", "patch_embed.projection.weight": "mmpretrain"}
# The block structure timm's ViT shares with OpenMMLab's (mmpretrain's VisionTransformer, mmseg's MAE):
# (timm name, OpenMMLab name), N a block index. Each OpenMMLab model adds its own LayerScale and norm names.
OPENMMLAB_SHARED = (
    ("patch_embed.proj.", "patch_embed.projection."),
    ("blocks.N.norm1.", "layers.N.ln1."),
    ("blocks.N.norm2.", "layers.N.ln2."),
    ("blocks.N.attn.qkv.", "layers.N.attn.qkv."),
    ("blocks.N.attn.proj.", "layers.N.attn.proj."),
    ("blocks.N.mlp.fc1.", "layers.N.ffn.layers.0.0."),
    ("blocks.N.mlp.fc2.", "layers.N.ffn.layers.1."),
)
MMPRETRAIN_OWN = (("blocks.N.ls1.gamma", "layers.N.attn.gamma1.weight"), ("blocks.N.ls2.gamma", "layers.N.ffn.gamma2.weight"),
                  ("norm.", "ln1."), ("norm_pre.", "pre_norm."))


def rename_rules(pairs: tuple[tuple[str, str], ...], to_timm: bool) -> tuple[tuple[str, str], ...]:
    """``(regex, replacement)`` for each ``(timm, other)`` name pair, towards timm's names or away from them;
    a name ending in ``.`` is a prefix, any other a whole name."""
    rules = []
    for timm, other in pairs:
        src, dst = (other, timm) if to_timm else (timm, other)
        pattern = "^" + re.escape(src).replace("N", r"(\d+)") + ("" if src.endswith(".") else "$")
        rules.append((pattern, dst.replace("N", r"\1")))
    return tuple(rules)


MMPRETRAIN_NAMES = rename_rules(OPENMMLAB_SHARED + MMPRETRAIN_OWN, to_timm=True)
# Tensors a ViT checkpoint holds that the frozen backbone does not use: (regex, reason).
UNUSED = (
    (r"^(mask_token|masked_embed)$", "mask token (pretraining only)"),
    (r"^decoder_|^decoder\.", "MAE decoder (pretraining only)"),
    (r"^(head|fc_norm|heads)\.", "classifier/projection head (dropped)"),
)
_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.")


def _is_patch_embed(t: Tensor) -> bool:
    return t.ndim == 4 and t.shape[1] == 3 and t.shape[2] == t.shape[3]


def find_vit_candidates(flat: Mapping[str, Tensor]) -> list[Candidate]:
    """Every ViT in ``flat`` (identical copies merged, as for ResNets), in key order."""
    found: list[tuple[str, str]] = []
    for key, t in flat.items():
        for anchor, layout in ANCHORS.items():
            prefix = key[: -len(anchor)]
            if key.endswith(anchor) and (prefix == "" or prefix.endswith(".")) and _is_patch_embed(t):
                found.append((prefix, layout))
    return candidates_at(found, flat)


def to_timm(tensors: Mapping[str, Tensor], layout: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors under timm's VisionTransformer names, {unused name: reason})`` of one backbone.

    ``tensors`` are the candidate's own names (prefix stripped). Names that map onto nothing
    known are kept as they are, so that the strict check against timm's model refuses them.
    """
    out: dict[str, Tensor] = {}
    unused: dict[str, str] = {}
    for name, value in tensors.items():
        why = next((reason for pattern, reason in UNUSED if re.search(pattern, name)), None)
        if why is not None:
            unused[name] = why
            continue
        new = _rename(name, layout)
        if new in out:
            raise ValueError(f"tensors {name!r} and another both map to {new!r}")
        out[new] = value
    if any(".mlp.w12." in k for k in out):  # timm's DINOv2 conversion would rename it into a mis-shaped fc1
        raise ValueError("SwiGLU MLP (DINOv2 ViT-g) is not supported")
    if {"register_tokens", "cls_token", "pos_embed"} <= set(out):  # DINOv2's names: timm's conversion (no model used)
        from timm.models.vision_transformer import _convert_dinov2

        out = _convert_dinov2(dict(out), None)
    return out, unused


def _rename(name: str, layout: str) -> str:
    if layout == "mmpretrain":
        for pattern, repl in MMPRETRAIN_NAMES:
            if re.search(pattern, name):
                return re.sub(pattern, repl, name)
        return name
    if m := _CHUNKED.match(name):  # DINOv2 BlockChunk: blocks.<chunk>.<global index>.
        return f"blocks.{m.group(1)}." + name[m.end():]
    return name


def square_part(n: int) -> int:
    """The largest square ≤ ``n``: the patch-grid part of a position embedding of ``n`` tokens."""
    side = int(n ** 0.5)
    while (side + 1) ** 2 <= n:
        side += 1
    while side * side > n:
        side -= 1
    return side * side
