"""SIGTERM as Ctrl-C: what ``kill``, Slurm's time limit and a container's stop send ends a command
the way Ctrl-C does (finished work kept, progress bars closed, a line on how to go on), instead of
killing it without a word.

:func:`sigterm_raises` makes SIGTERM raise :class:`Terminated`, a :class:`KeyboardInterrupt`, so
every clean-up written for Ctrl-C (a half-written checkpoint removed, empty result folders
removed, a pool's workers stopped) runs for it too; the CLI tells the two apart by the type.
"""
from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, as a shell reports a command killed by SIGTERM


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (while :func:`sigterm_raises` was active)."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While active, the first SIGTERM raises :class:`Terminated` in the main thread; a second one
    (a clean-up that hangs) gets the handler there was before, by default death. Only in a main
    process's main thread: Python runs handlers there alone, and a multiprocessing worker that
    its pool stops with SIGTERM should die quietly, not report it."""
    if threading.current_thread() is not threading.main_thread() or multiprocessing.parent_process() is not None:
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None:  # a handler set outside Python: the default is the closest we can restore
        previous = signal.SIG_DFL

    def terminate(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, previous)
        raise Terminated

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_words(exc: KeyboardInterrupt) -> tuple[str, int]:
    """What a command stopped by ``exc`` says it was, and its exit status."""
    if isinstance(exc, Terminated):
        return "terminated (SIGTERM)", EXIT_TERMINATED
    return "interrupted", EXIT_INTERRUPTED
