"""What is not the method: atomic writes, the run-folder lock, provenance, safe reads, signals, the CLI
helpers shared by commands, and the one job runner (local or SLURM through submitit).

The lowest layer (tests/test_layers.py): ``mast/``, ``transfer/`` and ``reports/`` import it; it imports
none of them.
"""
from __future__ import annotations

from pathlib import Path

#: The checkout (or the installed site-packages folder holding ``mast/``, ``transfer/``, ``detectron_configs/``).
PROJECT = Path(__file__).resolve().parents[1]


def project_path(value: str | Path) -> Path:
    """A relative path that names a project file (``detectron_configs/...``) resolves there, else stays."""
    path = Path(value)
    if not path.is_absolute() and (PROJECT / path).exists():
        return PROJECT / path
    return path
