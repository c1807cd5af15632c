"""``transfer.inspect_checkpoint`` for a ViT checkpoint: the same report as for a ResNet, from :mod:`transfer.backbones.vit.load`.

The candidates, the chosen one and why, the architecture read from the tensors (width, depth,
heads, patch, registers, LayerScale, pretraining resolution), the parameter count, the codebase's
evaluation pooling, and every tensor not used with its reason.
"""

from __future__ import annotations

from typing import Any, Mapping

from transfer.backbones.candidates import Candidate, backbone_tensors, unused_groups
from transfer.backbones.info import CheckpointError, Located
from transfer.backbones.vit.load import DEFAULT_POOL, check_state, guess_vit_codebase, infer_spec
from transfer.backbones.vit.layouts import to_timm


def inspect_vit(got: Located, report: dict[str, Any]) -> dict[str, Any]:
    """Fill ``report`` (transfer.inspect_checkpoint's dict) for the ViT :func:`transfer.backbones.locate` chose;
    ``error`` set when the tasks would refuse it."""
    chosen, unused_inside = got.chosen, {}
    report.update(chosen=chosen.name, choice=got.how, layout=f"{chosen.layout} names")
    try:
        raw = backbone_tensors(chosen, got.flat)
        codebase = guess_vit_codebase(got.flat, got.obj, chosen.prefix, chosen.layout, raw)
        report["codebase"] = codebase
        renamed, unused_inside = to_timm(raw, chosen.layout)
        spec = infer_spec(renamed, str(got.path))
        report["arch"] = (f"{spec.arch} (width {spec.embed_dim}, depth {spec.depth}, {spec.num_heads} heads, "
                          f"patch {spec.patch_size}, {spec.reg_tokens} registers, LayerScale "
                          f"{'yes' if spec.layer_scale else 'no'}, trained at {spec.img_size} px)")
        report["vit_pool"] = DEFAULT_POOL.get(codebase, "cls")
        state = check_state(renamed, spec, str(got.path))
        report["parameters"] = sum(v.numel() for v in state.values())
    except (CheckpointError, ValueError) as e:
        report["error"] = str(e)
    report["unused"] = _unused(got.flat, got.candidates, chosen, unused_inside)
    return report


def _unused(flat: Mapping, cands: list[Candidate], chosen: Candidate | None, inside: Mapping[str, str]) -> list[dict]:
    """Unused tensors, grouped; ``inside``: the chosen ViT's own unused tensors (MAE's decoder, ...) -> reason."""
    return unused_groups(flat, cands, chosen, lambda rest: (rest.split(".")[0] + (".*" if "." in rest else ""),
                                                            inside[rest]) if rest in inside else None)
