"""Convert a pretrained backbone (ResNet or ViT) into the formats the downstream engines load.

``python -m transfer.convert --ckpt X --to detectron2|mmseg --out Y [--backbone NAME]``

The checkpoint is read once by :func:`transfer.backbones.load` (every accepted wrapping and prefix ends
up as the family's reference state_dict); the family's own package converts it:

- a ResNet (:mod:`transfer.backbones.resnet.detectron2`, :mod:`transfer.backbones.resnet.mmseg`): detectron2's
  ResNet names in a model-zoo pickle, with a coverage check both ways; torchvision names under ``backbone.``
  for mmseg's ``ResNet(style='pytorch')``;
- a ViT (:mod:`transfer.backbones.vit.detectron2`, :mod:`transfer.backbones.vit.mmseg`): ViTDet's
  ``backbone.net.*`` names (LayerScale folded, class token and final norm unused); mmseg's ``MAE``
  backbone names (zero relative-position tables, unit LayerScale where the ViT has none).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from plumbing.atomic import DiskFullError, OutputError, pickle_atomic, torch_save_atomic

from transfer.backbones import CheckpointError, CheckpointInfo, load
from transfer.backbones.info import BackboneMismatch, ConversionError, add_backbone_arg
from transfer.backbones.resnet import detectron2 as resnet_d2, mmseg as resnet_mmseg
from transfer.backbones.vit import detectron2 as vit_d2, mmseg as vit_mmseg

ENGINES = ("detectron2", "mmseg")
# (family, engine) -> (the converter, how the file is written)
CONVERTERS: dict[tuple[str, str], tuple[Callable[..., Any], Callable[[Any, Any], None]]] = {
    ("resnet", "detectron2"): (resnet_d2.to_detectron2, pickle_atomic),
    ("resnet", "mmseg"): (resnet_mmseg.to_mmseg, torch_save_atomic),
    ("vit", "detectron2"): (vit_d2.to_detectron2_file, pickle_atomic),
    ("vit", "mmseg"): (vit_mmseg.to_mmseg_file_dict, torch_save_atomic),
}


def convert_file(ckpt: str | Path, to: str, out: str | Path, backbone: str | None = None) -> CheckpointInfo:
    """Read ``ckpt`` (its backbone ``backbone`` when it holds several), convert it for engine ``to``
    and write ``out`` atomically."""
    if to not in ENGINES:
        raise ConversionError(f"--to {to!r}: expected 'detectron2' or 'mmseg'")
    state, info = load(ckpt, backbone)
    convert, write = CONVERTERS[(info.family, to)]
    write(out, convert(state, info))
    return info


def check_out(ckpt: Path, out: Path, force: bool) -> None:
    """--out must be a new file (or --force), never a folder and never the input checkpoint."""
    if not out.name or out.is_dir():
        raise ConversionError(f"--out {out}: is a folder; expected an output file name")
    if out.exists() and ckpt.exists() and out.resolve() == ckpt.resolve():
        raise ConversionError(f"--out {out}: is the input --ckpt; write the converted file elsewhere")
    if out.exists() and not force:
        raise ConversionError(f"--out {out}: exists; pass --force to replace it")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer.convert", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="pretrained checkpoint (.pth); any accepted wrapping")
    parser.add_argument("--to", required=True, choices=ENGINES)
    parser.add_argument("--out", required=True, help="output file (.pkl for detectron2, .pth for mmseg)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out (never the --ckpt itself)")
    add_backbone_arg(parser)
    args = parser.parse_args(argv)
    try:
        check_out(Path(args.ckpt), Path(args.out), args.force)
        info = convert_file(args.ckpt, args.to, args.out, args.backbone)
    except (CheckpointError, ConversionError, BackboneMismatch, DiskFullError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {info.arch} from {info.path} (sha256 {info.sha256[:12]}, backbone "
          f"'{info.source_format}': {info.backbone_choice}) for {args.to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
