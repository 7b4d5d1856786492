"""In the guest: what both e2e runners need. Standard library only (it runs under emulation,
where every import costs seconds), and it only records: the host-side tests judge."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

SHARE = Path("/e2e")  # the host's folder for this test (init.sh mounts it)
LABEL = "Talking Head Cam"
VIDIOC_QUERYCAP = 0x80685600
V4L2_CAP_VIDEO_CAPTURE = 0x1
STOP_TIMEOUT_S = 15


def log(message: str) -> None:
    print(f"[{time.monotonic():9.2f}] {message}", flush=True)


def find_device(label: str = LABEL) -> str | None:
    """The /dev/videoN whose card label is `label`, as a browser finds it."""
    for entry in sorted(Path("/sys/class/video4linux").glob("video*")):
        if (entry / "name").read_text().strip() == label:
            return f"/dev/{entry.name}"
    return None


def capture(device: str, name: str, frames: int, timeout_s: float = 180) -> dict[str, Any]:
    """Read `frames` frames from `device` with ffmpeg, as a V4L2 client does, as cheaply as
    possible (no conversion: the guest is emulated). Writes NAME.raw (the frames as the
    device delivered them), NAME.ffmpeg.log (the stream format and, from -debug_ts, each
    frame's buffer timestamp) and NAME.v4l2.txt (the device's format and rate)."""
    info = subprocess.run(
        ["v4l2-ctl", "-d", device, "--all"], capture_output=True, text=True, timeout=60
    )
    (SHARE / f"{name}.v4l2.txt").write_text(info.stdout + info.stderr)
    argv = ["ffmpeg", "-hide_banner", "-nostdin", "-debug_ts", "-f", "v4l2", "-i", device]
    argv += ["-frames:v", str(frames), "-c:v", "copy", "-f", "rawvideo"]
    argv += ["-y", str(SHARE / f"{name}.raw")]
    started = time.monotonic()
    with (SHARE / f"{name}.ffmpeg.log").open("w") as err:
        try:
            rc = subprocess.run(argv, stderr=err, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = None
    log(f"captured {name}: rc={rc}")
    return {"rc": rc, "wall_s": time.monotonic() - started}


def can_capture(device: str) -> bool:
    """Whether the device offers video capture now (VIDIOC_QUERYCAP's device caps)."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        buf = bytearray(104)  # struct v4l2_capability
        fcntl.ioctl(fd, VIDIOC_QUERYCAP, buf)
    except OSError:
        return False
    finally:
        os.close(fd)
    device_caps = int.from_bytes(buf[88:92], "little")
    return bool(device_caps & V4L2_CAP_VIDEO_CAPTURE)


def wait_capturable(device: str, timeout_s: float) -> float | None:
    """Seconds until the device offers capture (with exclusive_caps=1 only once the writer
    has sent a frame), or None after `timeout_s`."""
    started = time.monotonic()
    while not can_capture(device):
        if time.monotonic() - started > timeout_s:
            return None
        time.sleep(0.05)
    return time.monotonic() - started


def device_caps(device: str) -> str:
    """The device's capabilities as v4l2-ctl reports them (a stuck 0.12.7 device shows
    neither Video Capture nor Video Output)."""
    done = subprocess.run(["v4l2-ctl", "-d", device, "--info"], capture_output=True, text=True)
    return done.stdout + done.stderr


def start_daemon(
    plan: dict[str, Any], config: str, name: str, notify: NotifySocket
) -> subprocess.Popen:
    """The daemon as its own process (the plan's Python, the checkout), telling `notify`
    what systemd would hear; its output goes to /e2e/NAME.daemon.log."""
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify.path),
        "PYTHONUNBUFFERED": "1",
        "XDG_CACHE_HOME": "/tmp/cache",
    }
    argv = [plan["python"], "-m", "daemon", "--config", config, "run"]
    with (SHARE / f"{name}.daemon.log").open("w") as out:
        return subprocess.Popen(argv, cwd=plan["repo"], env=env, stdout=out, stderr=out)


def stop_daemon(proc: subprocess.Popen) -> dict[str, Any]:
    """SIGTERM, as systemd stops it; killed after STOP_TIMEOUT_S (the rc then says so)."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGQUIT)  # its threads' stacks into its log
        time.sleep(2.0)
        proc.kill()
        rc = proc.wait()
    return {"rc": rc, "stop_s": time.monotonic() - sent}


def write_results(results: dict[str, Any]) -> None:
    tmp = SHARE / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.rename(SHARE / "results.json")
    os.sync()


class NotifySocket:
    """The systemd end of sd_notify, for a daemon the runner starts itself. Drained by a
    thread as systemd does: a full socket queue would block the daemon's sd_notify."""

    def __init__(self, path: Path):
        self.path = path
        path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.5)
        self.messages: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._closed = False
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append((time.monotonic(), data.decode(errors="replace")))
                self._cond.notify_all()

    def find(self, text: str, after: int = 0) -> int | None:
        with self._cond:
            for index in range(after, len(self.messages)):
                if text in self.messages[index][1]:
                    return index
        return None

    def wait_for(
        self, text: str, timeout_s: float, proc: subprocess.Popen | None = None, after: int = 0
    ) -> int | None:
        """Index of the first message from `after` on that contains `text`; None on timeout
        or when `proc` exits first."""
        deadline = time.monotonic() + timeout_s
        while (found := self.find(text, after)) is None:
            left = deadline - time.monotonic()
            if left <= 0 or (proc is not None and proc.poll() is not None):
                return None
            with self._cond:
                self._cond.wait(min(left, 0.5))
        return found

    def close(self) -> None:
        self._closed = True
        self._sock.close()
