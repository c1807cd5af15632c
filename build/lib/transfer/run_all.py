"""``python transfer/run_all.py`` (or ``python -m transfer.run_all``): the suite runner's command.

The logic is :mod:`transfer.orchestrate.run_all`; this file is the short path the README names.
"""
from transfer.orchestrate.run_all import main

if __name__ == "__main__":
    raise SystemExit(main())
