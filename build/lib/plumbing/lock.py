"""One writer per output folder: an exclusive ``fcntl.flock`` on ``FOLDER/.lock``, held by one process.

The operating system releases the lock when its holder exits, however it exits (kill -9
included), so a stale lock never blocks a user. A second process that wants the same folder gets
a one-line :class:`FolderBusyError` naming the holder's PID instead of interleaving its files.

A ``flock`` belongs to the open file, and ``fork`` shares open files: a DataLoader worker forked
while the lock is held would keep the folder locked after its parent was killed, until it noticed
(seconds later). So every forked child closes its copy at once (``os.register_at_fork``); closing a
copy never unlocks (only ``LOCK_UN`` or the last copy's close does), so the parent keeps its lock.
Programs started with ``exec`` never get it: Python opens the file non-inheritable.
"""
from __future__ import annotations

import errno
import fcntl
import os
import weakref
from pathlib import Path

LOCK_NAME = ".lock"
_HELD: "weakref.WeakSet[FolderLock]" = weakref.WeakSet()


class FolderBusyError(RuntimeError):
    """The folder cannot be held: another live process has it, or its lock cannot be made (one line)."""


class FolderUnusableError(FolderBusyError):
    """The folder or its ``.lock`` cannot be created or written (not a file, no space, no permission)."""


def _close_in_child() -> None:
    """After ``fork``, in the child: drop every inherited lock file (the parent keeps its lock)."""
    for lock in list(_HELD):
        lock._forget()


os.register_at_fork(after_in_child=_close_in_child)


class FolderLock:
    """Hold ``folder`` until :meth:`release` or process exit. ``what`` names the holder's job."""

    def __init__(self, folder: str | Path, what: str) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None
        path = self.folder / LOCK_NAME
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                raise FolderUnusableError(f"{path} is a folder, not a lock file; remove it (rmdir) or choose "
                                          "another output folder")
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise self._unusable(path, e) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            self._forget()
            raise FolderBusyError(f"{self.folder}: in use by another {what} (PID {holder}); wait for it "
                                  f"to finish or choose another folder") from None
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            self.release()
            raise self._unusable(path, e) from None
        _HELD.add(self)

    @staticmethod
    def _unusable(path: Path, error: OSError) -> FolderUnusableError:
        if error.errno == errno.ENOSPC:
            return FolderUnusableError(f"{path.parent}: no space left on the device to start a run there; "
                                       "free some space or choose another output folder")
        return FolderUnusableError(f"{path}: cannot create the folder's lock file ({error.strerror or error}); "
                                   "choose another output folder")

    def _forget(self) -> None:
        """Close this process's copy of the lock file without unlocking (a forked child's copy)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._forget()
        _HELD.discard(self)

    def __del__(self) -> None:  # dropped without release(): closing the last copy unlocks, like a file object
        self._forget()

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
