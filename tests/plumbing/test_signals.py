"""plumbing/signals.py: the one way run_all, the study and pretraining take SIGINT and SIGTERM (real signals)."""
from __future__ import annotations

import os
import signal

import pytest

from plumbing.signals import Terminated, exit_code, stop_signals


@pytest.mark.parametrize("signum, kind, code", [(signal.SIGTERM, Terminated, 143), (signal.SIGINT, KeyboardInterrupt, 130)])
def test_a_stop_signal_raises_like_ctrl_c_and_names_its_exit_code(signum, kind, code):
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a caller that ignores Ctrl-C: the command still stops
    try:
        with pytest.raises(KeyboardInterrupt) as caught, stop_signals():
            os.kill(os.getpid(), signum)
        assert type(caught.value) is kind and exit_code(caught.value) == code
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the caller's handler is back
    finally:
        signal.signal(signal.SIGINT, ignored)


def test_on_signal_receives_the_number_and_the_block_goes_on():
    seen = []
    before = signal.getsignal(signal.SIGTERM)
    with stop_signals(seen.append):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        after_signals = True
    assert after_signals and seen == [signal.SIGTERM, signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("on_signal", [None, print], ids=["raise", "on_signal"])
def test_a_child_forked_inside_the_block_dies_by_the_signal_silently(on_signal, tmp_path):
    """A pool worker forked while the command's handlers are installed: SIGTERM ends it as a default process
    (exit by signal 15, nothing on stderr), neither a Terminated traceback nor the parent's on_signal."""
    import multiprocessing as mp
    import sys
    import time

    err = tmp_path / "child.err"

    def child() -> None:
        sys.stderr = open(err, "w", buffering=1)
        os.dup2(sys.stderr.fileno(), 2)
        while True:
            time.sleep(0.05)

    with stop_signals(on_signal):
        proc = mp.get_context("fork").Process(target=child, daemon=True)
        proc.start()
        try:
            deadline = time.monotonic() + 10
            while not err.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGTERM)
            proc.join(5)
        finally:
            if proc.is_alive():  # it ignored SIGTERM: do not leave it behind
                proc.kill()
                proc.join()
    assert proc.exitcode == -signal.SIGTERM, proc.exitcode
    assert err.read_text() == ""
