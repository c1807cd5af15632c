"""``python -m transfer.knn``: the command of :mod:`transfer.probes.knn`."""
import sys

from transfer.probes.knn import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
