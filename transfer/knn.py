"""``python -m transfer.knn``: the command of :mod:`transfer.probes.knn`."""
from transfer.probes.knn import build_parser, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
