"""``python -m transfer.convert``: a pretrained backbone (ResNet or ViT) into detectron2's or mmseg's format.

The logic is :mod:`transfer.backbones.convert`; this file keeps the command's short name.
"""
from transfer.backbones.convert import main

if __name__ == "__main__":
    raise SystemExit(main())
