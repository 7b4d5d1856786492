"""Keep native libraries' start-up chatter out of the journal.

MediaPipe's C++ and TFLite code print lines like "W0000 ... Disabling support for feedback
tensors" straight to file descriptor 2 from their own threads, with no switch to turn them
off. Python keeps the real stderr (its logging and tracebacks go there directly); fd 2,
which only native code and child processes write to, becomes a pipe that a small thread
copies to the real stderr, dropping the known noise lines and nothing else.
"""

from __future__ import annotations

import os
import sys
import threading

NATIVE_NOISE = (
    "inference_feedback_manager",
    "Created TensorFlow Lite XNNPACK delegate",
    "All log messages before absl::InitializeLog()",
)

_installed = False


def filter_native_stderr() -> None:
    """Install the filter once per process (call before logging is set up)."""
    global _installed
    if _installed:
        return
    _installed = True
    real_fd = os.dup(2)
    sys.stderr.flush()
    sys.stderr = open(  # noqa: SIM115 - lives as long as the process
        real_fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False
    )
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    threading.Thread(
        target=_forward, args=(read_fd, real_fd), name="native-stderr", daemon=True
    ).start()


def _forward(read_fd: int, real_fd: int) -> None:
    with open(read_fd, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(4096):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not any(noise.encode() in line for noise in NATIVE_NOISE):
                    os.write(real_fd, line + b"\n")
        if pending:
            os.write(real_fd, pending)
