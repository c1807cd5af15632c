"""``transfer.inspect_checkpoint`` for a ViT checkpoint: the same report as for a ResNet, from :mod:`transfer.vit`.

The candidates, the chosen one and why, the architecture read from the tensors (width, depth,
heads, patch, registers, LayerScale, pretraining resolution), the parameter count, the codebase's
evaluation pooling, and every tensor not used with its reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from transfer.checkpoints import CheckpointError
from transfer.layouts import Candidate, LayoutError, backbone_tensors, unused_groups
from transfer.vit import DEFAULT_POOL, check_state, guess_vit_codebase, infer_spec, locate_vit
from transfer.vit_layouts import to_timm


def inspect_vit(obj: Mapping, flat: Mapping, path: Path, backbone: str | None, report: dict[str, Any]) -> dict[str, Any]:
    """Fill ``report`` (transfer.inspect_checkpoint's dict) for the ViT in ``obj``; ``error`` set when refused."""
    chosen = None
    try:
        _, cands, chosen, how = locate_vit(obj, path, backbone)
        report["candidates"] = [{"name": c.name, "role": c.role, "layout": c.layout, "arch": "ViT",
                                 "tensors": len(c.keys), "aliases": [a.rstrip(".") for a in c.aliases]} for c in cands]
        raw = backbone_tensors(chosen, flat)
        codebase = guess_vit_codebase(flat, obj, chosen.prefix, chosen.layout, raw)
        report.update(chosen=chosen.name, choice=how, codebase=codebase, layout=f"{chosen.layout} names")
        renamed, unused_inside = to_timm(raw, chosen.layout)
        spec = infer_spec(renamed, str(path))
        report["arch"] = (f"{spec.arch} (width {spec.embed_dim}, depth {spec.depth}, {spec.num_heads} heads, "
                          f"patch {spec.patch_size}, {spec.reg_tokens} registers, LayerScale "
                          f"{'yes' if spec.layer_scale else 'no'}, trained at {spec.img_size} px)")
        report["vit_pool"] = DEFAULT_POOL.get(codebase, "cls")
        state = check_state(renamed, spec, str(path))
        report["parameters"] = sum(v.numel() for v in state.values())
    except (CheckpointError, LayoutError, ValueError) as e:
        report["error"] = str(e)
        unused_inside = {}
        cands = []
    report["unused"] = _unused(flat, cands, chosen, unused_inside)
    return report


def _unused(flat: Mapping, cands: list[Candidate], chosen: Candidate | None, inside: Mapping[str, str]) -> list[dict]:
    """Unused tensors, grouped; ``inside``: the chosen ViT's own unused tensors (MAE's decoder, ...) -> reason."""
    return unused_groups(flat, cands, chosen, lambda rest: (rest.split(".")[0] + (".*" if "." in rest else ""),
                                                            inside[rest]) if rest in inside else None)
