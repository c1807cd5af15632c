"""``python -m transfer.inspect_checkpoint CKPT``: what a checkpoint holds, as the transfer tasks will read it.

The logic is :mod:`transfer.backbones.inspect_checkpoint`; this file keeps the command's short name.
"""
from transfer.backbones.inspect_checkpoint import main

if __name__ == "__main__":
    raise SystemExit(main())
