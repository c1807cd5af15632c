"""Stop signals, one way for every command: SIGINT (Ctrl-C) and SIGTERM (``kill``, a job scheduler).

``run_all``, the study and the demo stop like Ctrl-C on either signal (:class:`Terminated` for SIGTERM,
so the exit code can be the shell's 143 rather than 130); pretraining passes ``on_signal`` and stops at
its next step boundary, after saving. The handlers are the command's while the block runs and the
caller's again after it (a test or a notebook calling ``main`` keeps its own). A process forked inside the
block (a multiprocessing pool worker, a DataLoader worker) inherits the handlers but not the command: there a
stop signal does what it does by default, so a pool that terminates its workers stops them silently (each printed
a ``Terminated`` traceback) and a worker told to stop cannot ignore it through the parent's ``on_signal``.
"""
from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["Terminated", "exit_code", "stop_signals"]


class Terminated(KeyboardInterrupt):
    """SIGTERM: stops like Ctrl-C, but the command exits 128 + 15 = 143, as a shell reports it."""


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal number: 143 for SIGTERM (:class:`Terminated`), 130 for Ctrl-C."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def _raise(signum: int, _frame) -> None:
    if signum == signal.SIGTERM:
        raise Terminated(f"signal {signum}")
    raise KeyboardInterrupt(f"signal {signum}")


def _default_action(signum: int) -> None:
    """In a forked child: the signal's default action (the process ends as killed by it)."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


@contextmanager
def stop_signals(on_signal: Callable[[int], None] | None = None) -> Iterator[None]:
    """SIGINT and SIGTERM while the block runs. Without ``on_signal`` each raises KeyboardInterrupt
    (:class:`Terminated` for SIGTERM) whatever the caller had installed: an ignored SIGINT would also be
    inherited by every child process, which then could not be stopped. With ``on_signal`` the number is
    handed to it and the block goes on (a loop that stops at its next step)."""
    owner = os.getpid()
    act = _raise if on_signal is None else (lambda signum, _frame: on_signal(signum))

    def handler(signum: int, frame) -> None:
        if os.getpid() != owner:  # a child forked inside the block
            _default_action(signum)
        else:
            act(signum, frame)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
