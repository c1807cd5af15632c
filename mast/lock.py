"""One writer per output folder: an exclusive ``fcntl.flock`` on ``FOLDER/.lock``.

The operating system releases the lock when its holder exits, however it exits (kill -9
included), so a stale lock never blocks a user. A second process that wants the same folder gets
a one-line :class:`FolderBusyError` naming the holder's PID instead of interleaving its files.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_NAME = ".lock"


class FolderBusyError(RuntimeError):
    """Another live process holds the folder."""


class FolderLock:
    """Hold ``folder`` until :meth:`release` or process exit. ``what`` names the holder's job."""

    def __init__(self, folder: str | Path, what: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(self.folder / LOCK_NAME, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            self._file = None
            raise FolderBusyError(f"{self.folder}: in use by another {what} (PID {holder}); wait for it "
                                  f"to finish or choose another folder") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
