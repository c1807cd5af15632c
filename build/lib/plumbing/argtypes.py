"""argparse value types shared by the CLIs: a bad number is refused by the parser, in one line."""
from __future__ import annotations

import argparse

__all__ = ["positive_int", "positive_minutes"]


def positive_int(value: str) -> int:
    """A whole number ≥ 1 (``--jobs``, ``--slurm-time``: 0 or -5 would mean "no limit" to SLURM)."""
    try:
        number = int(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive whole number")
    return number


def positive_minutes(value: str) -> int:
    """A SLURM time limit in whole minutes, 1 … one year (sbatch reads 0 and negative values as unlimited)."""
    number = positive_int(value)
    if number > 366 * 24 * 60:
        raise argparse.ArgumentTypeError(f"{value!r}: more than a year of minutes")
    return number

