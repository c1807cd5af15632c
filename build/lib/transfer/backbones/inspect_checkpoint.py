"""What a checkpoint holds, as the transfer tasks will read it.

    python -m transfer.inspect_checkpoint CKPT [--backbone NAME] [--json]

A few lines: the file, the codebase that most likely wrote it, every candidate backbone (its role
and architecture), the one the tasks would use and why, its architecture and parameter count, the
tensors left unused and why, and training metadata (epoch, method...) when the file has some.
Exit code 0 when a backbone can be used, 1 when the tasks would refuse the file (the reason is
printed), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

from transfer.backbones.candidates import Candidate
from transfer.backbones.info import CheckpointError, add_backbone_arg, find_method
from transfer.backbones import locate
from transfer.backbones.resnet.inspection import describe_resnet, inspect_resnet, unused
from transfer.backbones.vit.inspection import inspect_vit

METADATA_KEYS = ("epoch", "epochs", "global_step", "iteration", "iter", "phase_idx", "train_phase_idx", "arch",
                 "model", "method", "version", "pytorch-lightning_version", "mmselfsup_version", "mmpretrain_version",
                 "mmengine_version", "mmcls_version", "loss", "metric")


def inspect_checkpoint(path: str | Path, backbone: str | None = None) -> dict[str, Any]:
    """Everything :func:`main` prints, as a JSON-ready dict (``error`` set when the tasks would refuse)."""
    got = locate(path, backbone)
    report: dict[str, Any] = {
        "path": str(got.path), "sha256": got.sha256, "size_mb": round(got.path.stat().st_size / 2**20, 1),
        "tensors": len(got.flat), "family": got.family, "metadata": metadata(got.obj, got.path),
        "candidates": [_describe(c, got.flat, f) for f, cands in got.found.items() for c in cands],
        "codebase": None, "chosen": None, "choice": None, "arch": None, "stem": None, "layout": None, "parameters": None,
        "unused": [], "error": got.error or None, **got.provenance,
    }
    if got.chosen is None:
        report["unused"] = unused(got.flat, got.candidates, None)
        return report
    return inspect_vit(got, report) if got.family == "vit" else inspect_resnet(got, report)


def _describe(c: Candidate, flat: Mapping, family: str) -> dict[str, Any]:
    arch = "ViT" if family == "vit" else describe_resnet(c, flat)
    return {"name": c.name, "role": c.role, "layout": c.layout, "arch": arch, "tensors": len(c.keys),
            "aliases": [a.rstrip(".") for a in c.aliases], "family": family}


def metadata(obj: Mapping, path: Path) -> dict[str, Any]:
    """Training metadata found next to the weights (top level, mmengine ``meta``, argparse ``args``)."""
    out: dict[str, Any] = {}
    sources = [obj, obj.get("meta"), vars(obj["args"]) if isinstance(obj.get("args"), argparse.Namespace) else None]
    for source in sources:
        if not isinstance(source, Mapping):
            continue
        for key in METADATA_KEYS:
            value = source.get(key)
            if isinstance(value, (int, float, str, bool)) and key not in out:
                out[key] = value
    method = find_method(obj, path)
    if method:
        out["method"] = method
    return out


def format_report(r: dict[str, Any]) -> str:
    """The human-readable form: a few lines."""
    cands = ", ".join(f"'{c['name']}' ({c['role']}, {c['arch']}"
                      + (f", same as {c['aliases']}" if c["aliases"] else "") + ")" for c in r["candidates"])
    lines = [f"checkpoint: {r['path']} ({r['size_mb']} MB, {r['tensors']} tensors, sha256 {r['sha256'][:12]})",
             f"written by: {r['codebase'] or 'unknown'}",
             f"candidates: {cands or 'none'}"]
    if r.get("reference"):
        lines.insert(1, f"from: {r['reference']} -> {r['resolved']}")
    if r["error"]:
        lines.append(f"refused: {r['error']}")
    if r["chosen"] is not None:
        lines.append(f"backbone: '{r['chosen']}' ({r['choice']})")
    if r["arch"]:
        layout = {"sequential": "nn.Sequential child indices", "torchvision": "torchvision names"}.get(r["layout"], r["layout"])
        params = f", {r['parameters']:,} parameters without {'head' if r.get('vit_pool') else 'fc'}" if r["parameters"] else ""
        padding = r.get("stem_padding")
        padding = f"padding {padding}: {r.get('stem_padding_source')}" if padding is not None else \
            f"padding unknown: {r.get('stem_padding_source')}; the probes need --stem-padding N"
        stem = (f", CIFAR stem: 3x3 stride-1 conv1 ({padding}), no max-pool; probes run at 32 px, "
                "detection and segmentation refuse it") if r.get("stem") == "cifar" else ""
        lines.append(f"architecture: {r['arch']} ({layout}{params}{stem})")
    if r.get("vit_pool"):
        lines.append(f"probe features: {r['vit_pool']} (as {r['codebase']} evaluates; --vit-pool to change)")
    if r["unused"]:
        lines.append("unused: " + "; ".join(f"{u['group']} {u['count']} ({u['reason']})" for u in r["unused"]))
    meta = ", ".join(f"{k}={v}" for k, v in r["metadata"].items())
    lines.append(f"metadata: {meta or 'none'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer.inspect_checkpoint", description=__doc__.split("\n")[0])
    parser.add_argument("ckpt", help="checkpoint file (.pth/.pt/.pkl/.safetensors, a shard *.index.json) or a hub "
                        "reference (hf://ORG/REPO[@REV][/FILE], torchvision://, timm://, https://; docs/HUBS.md)")
    add_backbone_arg(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    args = parser.parse_args(argv)
    try:
        report = inspect_checkpoint(args.ckpt, args.backbone)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 1 if report["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
