"""Child processes that can be stopped: Ctrl-C restored in each child, SIGTERM taken as Ctrl-C, and a set of
children stopped together (ChildProcesses: the experiment runner's jobs, benchmarks/gpu_run.py's stages).

A program a shell starts in the background (`&`, nohup) has SIGINT ignored, and every process it starts
inherits that, so a Ctrl-C sent to a child to let it save its progress would do nothing. Commands started
through `with_default_sigint` get SIGINT back at its default first. `sigterm_as_ctrl_c` makes SIGTERM (`kill`,
a job scheduler) raise KeyboardInterrupt in the main thread, so the caller stops its children as on Ctrl-C
instead of dying and leaving them running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

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


class ChildProcesses:
    """Child processes started by one supervisor and stopped together, from any thread.

    Each command runs through `with_default_sigint`. With `own_groups` each child leads its own process group
    (in its own session): stopping it stops everything it started, and a terminal's Ctrl-C reaches only the
    supervisor, which passes it on once. Without, the children stay in the supervisor's group, so a supervisor
    above it that stops that group reaches them too.
    """

    def __init__(self, grace: float, own_groups: bool = False) -> None:
        self.grace = grace  # seconds from Ctrl-C to kill
        self.own_groups = own_groups
        self.stopping = threading.Event()  # set by stop(): no child starts until reset()
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        """How many children run now."""
        with self._lock:
            return len(self._procs)

    def start(self, cmd: list[str], **popen: Any) -> subprocess.Popen | None:
        """Start `cmd` (Popen keywords as given); None once stop() has run."""
        with self._lock:  # with the check, so that no child starts once stop() has taken the list
            if self.stopping.is_set():
                return None
            proc = subprocess.Popen(with_default_sigint(cmd), start_new_session=self.own_groups, **popen)
            self._procs.add(proc)
        return proc

    def wait(self, proc: subprocess.Popen, timeout: float | None = None) -> int | None:
        """`proc`'s exit status; past `timeout` it is stopped as stop() does and None is returned. An interrupt
        while waiting leaves it running: the caller stops them all with stop()."""
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._stop([proc])
            return None
        with self._lock:
            self._procs.discard(proc)
        return code

    def stop(self) -> None:
        """Stop every child running and start none after: Ctrl-C first (runs save their progress), then, after
        up to `grace` seconds (at once on a second Ctrl-C), kill what is left."""
        with self._lock:
            self.stopping.set()
            procs = list(self._procs)
        self._stop(procs)

    def reset(self) -> None:
        """Allow children to start again after stop() (every child has ended)."""
        self.stopping.clear()

    def _stop(self, procs: list[subprocess.Popen]) -> None:
        for proc in procs:
            self._send(proc, interrupt=True)
        try:
            end = time.monotonic() + self.grace
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.0, end - time.monotonic()))
        finally:
            for proc in procs:
                self._send(proc, interrupt=False)
                proc.wait()
            with self._lock:
                self._procs.difference_update(procs)

    def _send(self, proc: subprocess.Popen, interrupt: bool) -> None:
        """Ctrl-C (`interrupt`) or a kill to the child, or with own_groups to its whole group."""
        with contextlib.suppress(ProcessLookupError):
            if self.own_groups:
                os.killpg(proc.pid, signal.SIGINT if interrupt else signal.SIGKILL)
            elif interrupt:
                proc.send_signal(signal.SIGINT)
            else:
                proc.kill()
