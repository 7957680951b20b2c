"""Child processes that can be stopped: Ctrl-C restored in each child, SIGTERM taken as Ctrl-C.

A program a shell starts in the background (`&`, nohup) has SIGINT ignored, and every process it starts
inherits that, so a Ctrl-C sent to a child to let it save its progress would do nothing. Commands started
through `with_default_sigint` get SIGINT back at its default first. `sigterm_as_ctrl_c` makes SIGTERM (`kill`,
a job scheduler) raise KeyboardInterrupt in the main thread, so the caller stops its children as on Ctrl-C
instead of dying and leaving them running.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

_RESTORE_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "os.execvp(sys.argv[1], sys.argv[1:])")


def with_default_sigint(cmd: list[str]) -> list[str]:
    """`cmd`, run through a small launcher that restores SIGINT to its default and then execs it (same pid)."""
    return [sys.executable, "-c", _RESTORE_SIGINT, *cmd]


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt as Ctrl-C does (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
