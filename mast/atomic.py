"""Atomic file writes: nothing a user produced is ever half-written.

Every writer goes through :func:`atomic_write`: the content goes to a temp file in the target's
folder, is flushed and fsynced, then ``os.replace`` moves it into place (atomic on POSIX). A
process killed at any moment leaves either the old file or the new one, never a mix.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask once: mkstemp's 0600 must not leak into results

__all__ = ["atomic_write", "write_bytes_atomic", "write_text_atomic", "torch_save_atomic", "pickle_atomic"]


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temp file next to ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def torch_save_atomic(path: str | Path, obj: Any) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def pickle_atomic(path: str | Path, obj: Any) -> None:
    atomic_write(path, lambda f: pickle.dump(obj, f, protocol=4))
