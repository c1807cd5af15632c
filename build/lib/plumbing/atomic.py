"""Atomic file writes: nothing a user produced is ever half-written.

Every writer goes through :func:`atomic_write`: the content goes to a temp file in the target's
folder, is flushed and fsynced, then ``os.replace`` moves it into place (atomic on POSIX). A
process killed at any moment leaves either the old file or the new one, never a mix; the temp
files such a kill leaves behind are removed by :func:`remove_stale_temps` when the folder's owner
starts again. A full disk is a one-line :class:`DiskFullError` naming the path.
"""
from __future__ import annotations

import errno
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask once: mkstemp's 0600 must not leak into results
_FULL = (errno.ENOSPC, errno.EDQUOT)

__all__ = ["DiskFullError", "OutputError", "make_folder", "atomic_write", "write_bytes_atomic", "write_text_atomic", "torch_save_atomic",
           "pickle_atomic", "append_line_atomic", "remove_stale_temps"]


class DiskFullError(OSError):
    """No space left where a result was being written (one line: path, bytes needed, bytes free)."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]"
        return str(self.strerror)


class OutputError(OSError):
    """A result folder or file that cannot be created (``--out /proc/nope``, a read-only folder): one line."""

    def __str__(self) -> str:
        return str(self.strerror)


def _reason(e: OSError, path: Path) -> str:
    """``No such file or directory: /proc/nope`` (the file named only when it is not ``path``)."""
    other = f": {e.filename}" if e.filename and str(e.filename) != str(path) else ""
    return f"{e.strerror or type(e).__name__}{other}"


def _size(n: float) -> str:
    """Bytes as a person reads them: 512 bytes, 12.3 kB, 4.1 MiB, 2.0 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("kB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def _disk_full(path: Path, needed: int) -> DiskFullError:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = 0
    needs = f"needs at least {_size(needed)}, " if needed > 0 else ""  # 0: the first write failed
    return DiskFullError(errno.ENOSPC, f"{path}: no space left on the device ({needs}{_size(free)} free); "
                         "nothing was changed: free some space and run the same command again")


def make_folder(path: str | Path, what: str = "--out") -> Path:
    """``mkdir -p path``; a full disk is a :class:`DiskFullError`, any other failure (a parent that is
    a file, ``/proc``, no permission) an :class:`OutputError` naming ``what`` and the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno in _FULL:
            raise _disk_full(path / ".", 0) from None
        raise OutputError(e.errno, f"{what} {path}: cannot create the folder ({_reason(e, path)})") from None
    return path


class _Counting:
    """File wrapper that counts the bytes written (for the disk-full message)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.n = f, 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return self.f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temp file next to ``path``, then move it into place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        if e.errno in _FULL:
            raise _disk_full(path, 0) from None
        raise OutputError(e.errno, f"{path}: cannot be written ({_reason(e, path)})") from None
    counted = None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            counted = _Counting(f)
            write(counted)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if _is_disk_full(exc):
            raise _disk_full(path, counted.n if counted else 0) from None
        raise


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC raised directly, or wrapped by torch.save (a RuntimeError naming the write failure)."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        return _is_disk_full(cause)
    return isinstance(exc, RuntimeError) and ("No space left" in str(exc) or "file write failed" in str(exc))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def torch_save_atomic(path: str | Path, obj: Any) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def pickle_atomic(path: str | Path, obj: Any) -> None:
    atomic_write(path, lambda f: pickle.dump(obj, f, protocol=4))


def append_line_atomic(path: str | Path, line: str) -> None:
    """Append one line to ``path`` under an exclusive lock, in one ``write``, then ``fsync``. On any
    failure the file is cut back to its old length, so readers never see a torn line (a full disk
    becomes a :class:`DiskFullError`). A line a killed writer left without its newline is closed first."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line.rstrip("\n") + "\n").encode()
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = b"\n" + data
            try:
                if os.write(f.fileno(), data) != len(data):
                    raise OSError(errno.ENOSPC, "short write")
                os.fsync(f.fileno())
            except OSError as exc:
                os.ftruncate(f.fileno(), size)
                if exc.errno in _FULL:
                    raise _disk_full(path, len(data)) from None
                raise
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temp files a killed :func:`atomic_write` left in ``folder`` (``.NAME.XXXX.tmp``).
    Call it only while holding the folder (see :mod:`plumbing.lock`): a live writer's temp looks the same."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            if tmp.is_file() and tmp.name.count(".") >= 3:
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed
