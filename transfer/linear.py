"""``python -m transfer.linear``: the command of :mod:`transfer.probes.linear`."""
from transfer.probes.linear import build_parser, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
