"""A wall-clock limit for calls into learner code (SIGALRM where available, i.e. the main thread on POSIX)."""

from __future__ import annotations

import contextlib
import signal
import threading


class CallTimeout(Exception):
    """A learner's function ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise CallTimeout inside the block after ``seconds``; a no-op where signals cannot be used."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def _raise(signum, frame):
        raise CallTimeout(f"took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
