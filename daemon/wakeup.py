"""Waking the supervisor from a signal handler or another thread, with no lock.

A Python signal handler runs on the main thread between any two bytecodes, also inside
`threading.Event.wait()` or `clear()` while they hold the event's internal (non-reentrant)
lock: a handler that calls `Event.set()` there blocks on its own thread's lock forever, and
every later signal, SIGTERM included, only piles up behind it. A byte on a socket pair takes
no lock, so `set()` is safe anywhere; the kernel's socket buffer is the only shared state.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
from collections.abc import Iterator

# Read per wait: a wakeup only says "look at the flags", how many came means nothing (a full
# buffer drops the byte of a wakeup that is already pending).
_READ_BYTES = 4096


class Wakeup:
    """`wait(timeout)` returns early once `set()` was called (by any thread or a signal
    handler) since the last wait; with `signals_wake()` a signal wakes it from C, before its
    Python handler has even run (the handler runs on the main thread only)."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def set(self) -> None:
        """Wake the waiter (async-signal-safe in Python's sense: no lock taken)."""
        with contextlib.suppress(OSError):  # full: a wakeup is pending already; closed: moot
            self._writer.send(b"\0")

    def wait(self, timeout_s: float) -> bool:
        """Sleep until woken or `timeout_s` passed; True when woken. Consumes the wakeups."""
        readable, _, _ = select.select([self._reader], [], [], timeout_s)
        if not readable:
            return False
        with contextlib.suppress(OSError):  # one read, never a loop that signals could keep
            self._reader.recv(_READ_BYTES)  # going; what is left only wakes the next wait
        return True

    @contextlib.contextmanager
    def signals_wake(self) -> Iterator[None]:
        """While inside, every signal with a Python handler wakes `wait` (signal.set_wakeup_fd,
        main thread only); the previous wakeup fd is restored on leaving."""
        previous = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous)

    def close(self) -> None:
        self._reader.close()
        self._writer.close()
