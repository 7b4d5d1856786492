"""A dependency-free sd_notify: does nothing outside systemd and never raises."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

# A receiver that stopped reading (a full queue) must not hold the supervisor, and with it
# SIGTERM, for good: the message is dropped after this long (systemd reads at once).
SEND_TIMEOUT_S = 2.0


class Notifier:
    """Sends `KEY=value` datagrams to $NOTIFY_SOCKET (path or @abstract)."""

    def __init__(self, env: Mapping[str, str] = os.environ):
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_s = self._watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    @staticmethod
    def _watchdog_interval(env: Mapping[str, str]) -> float | None:
        """WatchdogSec from $WATCHDOG_USEC, when it is meant for this process."""
        pid = env.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            return None
        try:
            usec = int(env.get("WATCHDOG_USEC", "0"))
        except ValueError:
            return None
        return usec / 1e6 if usec > 0 else None

    def send(self, *lines: str) -> bool:
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.connect(self._address)
                sock.sendall("\n".join(lines).encode())
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        return self.send(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")
