"""`python -m thc_testing.signal_everywhere --config FILE run`: the daemon, with SIGUSR1 (a
calibration request: harmless) raised on its main thread at every line that thread runs once
frames flow, STORM_LINES times; then "signal storm over" in its log.

Python runs a signal handler on the main thread between any two lines, wherever that thread
is; a handler that waits for a lock the interrupted code holds (Event.set inside
Event.wait) waits forever, and no later signal, SIGTERM included, is acted on. A real signal
lands on such a line only now and then (the CI hangs); here every line gets one, so such a
handler blocks at once, every run.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType
from typing import Any

from daemon.cli import main
from daemon.service import Daemon

STORM_LINES = 3000  # about ten supervisor ticks, each line of them interrupted
SIGNAL = signal.SIGUSR1

log = logging.getLogger(__name__)


class SignalEverywhere:
    """A trace function for the main thread: finds the Daemon as its `run` starts, waits for
    its first published frame, then raises SIGNAL on each line event (the handler runs
    inside raise_signal, on that very line)."""

    def __init__(self, lines: int):
        self.left = lines
        self.daemon: Daemon | None = None
        self.active = False

    def on_call(self, frame: FrameType, event: str, arg: Any) -> Any:
        if self.daemon is None and frame.f_code is Daemon.run.__code__:
            self.daemon = frame.f_locals["self"]
        if not self.active and self._frames_flow():
            self.active = True
            caller = frame.f_back
            while caller is not None:  # the running supervisor loop's own lines too
                caller.f_trace = self.on_line
                caller = caller.f_back
        return self.on_line if self.active else None

    def on_line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event != "line" or self.left <= 0:
            return self.on_line
        self.left -= 1
        signal.raise_signal(SIGNAL)
        if self.left == 0:
            sys.settrace(None)
            log.info("signal storm over: %s raised at %d lines", SIGNAL.name, STORM_LINES)
        return self.on_line

    def _frames_flow(self) -> bool:
        loop = self.daemon.loop if self.daemon is not None else None
        return loop is not None and loop.frames_published > 0


if __name__ == "__main__":
    sys.settrace(SignalEverywhere(STORM_LINES).on_call)
    sys.exit(main())
