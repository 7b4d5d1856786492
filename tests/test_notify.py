"""daemon.notify: sd_notify that never holds the daemon up."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from daemon.notify import Notifier

HANG_S = 60.0  # a send that blocks for good ends the test here (a hang guard, not a timing)


def test_a_receiver_that_stopped_reading_does_not_block_the_sender_for_good(
    tmp_path: Path,
) -> None:
    """The receiver's queue fills (nobody reads it); a send then gives up and says so instead
    of blocking the supervisor, and with it SIGTERM, for as long as the receiver is stuck."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        sent: list[bool] = []

        def send_until_refused() -> None:
            while len(sent) < 100_000 and (not sent or sent[-1]):
                sent.append(notifier.status("live"))

        sender = threading.Thread(target=send_until_refused, daemon=True)
        sender.start()
        sender.join(HANG_S)
        assert not sender.is_alive(), f"sd_notify blocked after {len(sent)} messages"
    assert sent[-1] is False and all(sent[:-1]), (len(sent), sent[-3:])
