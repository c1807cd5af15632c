"""``python -m transfer.fewshot``: the command of :mod:`transfer.probes.fewshot`."""
import sys

from transfer.probes.fewshot import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
