"""``python -m transfer.fewshot``: the command of :mod:`transfer.probes.fewshot`."""
from transfer.probes.fewshot import build_parser, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
