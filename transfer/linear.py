"""``python -m transfer.linear``: the command of :mod:`transfer.probes.linear`."""
import sys

from transfer.probes.linear import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
