"""Read a small file a user or another process could have replaced: only a regular file, never blocking.

``open()`` on a FIFO blocks until a writer appears (a hang), on a device reads forever, and follows a
symlink anywhere. :func:`read_regular` opens with ``O_NONBLOCK`` (a FIFO opens at once), checks with
``fstat`` on the open descriptor that it is a regular file (no race between check and read), refuses
symlinks when asked (``O_NOFOLLOW``) and files over a size limit, and says what is wrong in one line.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["UnreadableFile", "read_regular", "read_regular_text", "short"]


class UnreadableFile(ValueError):
    """A file that is not a readable regular file of a sensible size (one-line message naming it)."""


def short(text: object, limit: int = 120) -> str:
    """``repr``-like text cut to ``limit`` characters: an error line names a 50 MB value without holding it."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def read_regular(path: str | Path, what: str, max_bytes: int, follow: bool = True) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes`` (``follow=False``: not a symlink)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            raise UnreadableFile(f"{what} {path}: is a symlink; it must be a regular file of its own") from None
        raise UnreadableFile(f"{what} {path}: cannot be read ({e.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) else \
                "not a regular file"
            raise UnreadableFile(f"{what} {path}: is {kind}; expected a regular file")
        if info.st_size > max_bytes:
            raise UnreadableFile(f"{what} {path}: {info.st_size:,} bytes, more than the {max_bytes:,} such a file "
                                 "can sensibly hold")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:  # it grew while being read
                raise UnreadableFile(f"{what} {path}: more than {max_bytes:,} bytes")
        return b"".join(chunks)
    except OSError as e:
        raise UnreadableFile(f"{what} {path}: cannot be read ({e.strerror})") from None
    finally:
        os.close(fd)


def read_regular_text(path: str | Path, what: str, max_bytes: int, follow: bool = True) -> str:
    """:func:`read_regular` decoded as UTF-8 (one line when it is not), keeping ``\\r\\n`` as it is."""
    data = read_regular(path, what, max_bytes, follow)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableFile(f"{what} {path}: not UTF-8 text") from None
