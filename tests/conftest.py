"""Shared test helpers: real face images, real video files, a real sd_notify socket and a
real daemon process. Nothing here needs a camera, a GPU or v4l2loopback."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.generator.avatar import load_avatar
from engines.generator.interface import DriverView, letterbox

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


TESTS_DIR = Path(__file__).resolve().parent
# The test support switch (daemon/test_support.py) for a daemon in a child process: fault
# sources and sinks, the stall signal, remote time codes. The checkout is on the path too,
# ahead of the venv's editable install: its code is under test, wherever the venv came from.
TEST_SUPPORT = {
    "TALKING_HEAD_CAM_TEST_SUPPORT": "thc_testing.plugin",
    "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(REPO)]),
}


@pytest.fixture
def test_support(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test support switched on in this process (in-process daemons and captures)."""
    monkeypatch.setenv("TALKING_HEAD_CAM_TEST_SUPPORT", "thc_testing.plugin")


@pytest.fixture(scope="session")
def face_image() -> np.ndarray:
    """Grace Hopper (the embedded default avatar), BGR."""
    return load_avatar("default")


@pytest.fixture(scope="session")
def other_face() -> np.ndarray:
    """A second real face, used as the *camera* so it can never be mistaken for the avatar:
    scikit-image's astronaut (it ships with the package: the same face with or without
    ../shared/data)."""
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def unit_seconds(key: str, unit: str = "talking-head-cam.service") -> float:
    """A seconds setting of a unit in systemd/ (`TimeoutStopSec=5`): a limit the daemon is
    held to where it runs, so the one a timing test judges by (rather than a margin of its
    own that a loaded machine may miss)."""
    path = REPO / "systemd" / unit
    found = re.search(rf"^{key}=(\d+)$", path.read_text(), re.M)
    assert found, f"no {key}= in {path}"
    return float(found[1])


def wait_until(predicate, timeout_s: float = 5.0) -> bool:
    """Poll an observable condition with a deadline (synchronisation, not a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        pause.wait(0.002)
    return True


def write_video(
    path: Path, image: np.ndarray, frames: int, fps: float, size: tuple[int, int] = (320, 240)
) -> Path:
    """A real MP4 of `image` drifting, so consecutive frames differ."""
    base = cv2.resize(image, size)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        shift = np.float32([[1, 0, (i % 10) - 5], [0, 1, 0]])
        writer.write(cv2.warpAffine(base, shift, size, borderMode=cv2.BORDER_REFLECT))
    writer.release()
    return path


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames, fps


@cache
def pypi_reachable() -> bool:
    """Whether pypi.org answers, asked once a session: the tests that install from PyPI skip
    with the reason without it."""
    try:
        socket.create_connection(("pypi.org", 443), timeout=10).close()
    except OSError:
        return False
    return True


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def driver_view(image: np.ndarray) -> DriverView:
    """A real face image with its landmarks (FaceMesh on the still image), as the pipeline
    lends a generator that asked for the driver's pixels."""
    from engines.landmarks.config import MediaPipeTrackingConfig
    from engines.landmarks.mediapipe_cpu import MediaPipeLandmarks

    mesh = MediaPipeLandmarks(MediaPipeTrackingConfig(), static_images=True)
    try:
        found = mesh.detect(image, 0.0, 0)
    finally:
        mesh.close()
    assert found is not None, "no face in the driver image"
    return DriverView(image, found.points)


def face_x(frames: Iterable[np.ndarray]) -> np.ndarray:
    """Per frame, the mean x (pixels) of the re-tracked face's rigid landmarks (NaN where
    no face was found), with the evaluation's tracker: where the head is, so a test can tell
    an avatar that moves with its driver from a frozen one (tracker noise on a still image is
    well under a pixel)."""
    from thc_tools.evaluate import track

    from engines.facegeom import RIGID

    return np.array([np.nan if p is None else float(p[RIGID, 0].mean()) for p in track(frames)])


def person_sweep(
    person: np.ndarray, framing: np.ndarray, size: tuple[int, int], shift_px: Iterable[float]
) -> np.ndarray:
    """Output pixels the person may cover while the head's shift (output pixels) carries the
    body along: its mask (the faintest alpha counts), framed by the 2x3 `framing`, anywhere
    from where it was to where the shift takes it (down the torso the body follows less)."""
    anywhere = ((person > 0) * 255).astype(np.uint8)
    framed = cv2.warpAffine(anywhere, np.float32(framing), size)
    steps = np.linspace((0.0, 0.0), tuple(shift_px), 9)
    moved = [cv2.warpAffine(framed, np.float32([[1, 0, x], [0, 1, y]]), size) for x, y in steps]
    return np.max(moved, axis=0) > 0


def expected_still(avatar: np.ndarray, width: int, height: int) -> np.ndarray:
    """What the `still` generator publishes: the avatar letterboxed."""
    return letterbox(avatar, width, height)


def mesh_rest_frame(width: int, height: int, avatar: str = "default") -> np.ndarray:
    """What the `mesh` generator publishes for a neutral motion: the avatar at rest."""
    from daemon.config import Config
    from daemon.pipeline import make_generator
    from engines.motion.estimator import Motion

    config = Config.model_validate({"output": {"width": width, "height": height}})
    return make_generator(config, avatar).render(Motion())


class NotifySocket:
    """The systemd side of sd_notify: a datagram socket that records what arrives."""

    def __init__(self, path: Path):
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append((time.monotonic(), data.decode()))
                self._cond.notify_all()

    def wait_for(self, text: str, timeout_s: float = 30.0, after: int = 0) -> int:
        """Index of the first message at or after `after` that contains `text`."""

        def find() -> int | None:
            for i, (_, msg) in enumerate(self.messages[after:], after):
                if text in msg:
                    return i
            return None

        with self._cond:
            self._cond.wait_for(lambda: find() is not None, timeout_s)
            index = find()
        assert index is not None, f"no {text!r} within {timeout_s} s; got {self.texts()}"
        return index

    def texts(self) -> list[str]:
        with self._cond:
            return [m for _, m in self.messages]

    def close(self) -> None:
        self._closed = True
        self._sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


# A daemon not gone this long after SIGTERM hangs; one that is merely slow (a loaded machine:
# once seen past 5 s, the units' TimeoutStopSec, with the e2e guest and the suite on 2 cores)
# must not fail a test that is not about how fast it stops.
STOP_HANG_S = 30.0


class DaemonProcess:
    """`talking-head-cam run` as a real child process, its stderr captured to a file;
    `module`: what `python -m` runs (a test driver that wraps the daemon's CLI)."""

    def __init__(
        self,
        config: Path,
        notify: NotifySocket | None,
        env: dict[str, str],
        module: str = "daemon",
    ):
        self.config, self.log_path = config, config.parent / "daemon.log"
        child_env = {**os.environ, **env}
        child_env.pop("NOTIFY_SOCKET", None)
        if notify is not None:
            child_env["NOTIFY_SOCKET"] = str(notify.path)
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(config), "run"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=config.parent,
        )

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout_s: float = STOP_HANG_S) -> int:
        """SIGTERM; the exit code (-9: still running after `timeout_s`, killed). A hang guard:
        how fast the daemon stops is judged by the tests that time it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGQUIT)  # its threads' stacks into the log
                time.sleep(2.0)
                self.proc.kill()
                self.proc.wait()
                print(f"daemon did not stop; its log ends:\n{self.log()[-8000:]}")
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_daemon(tmp_path: Path, notify_socket: NotifySocket):
    started: list[DaemonProcess] = []

    def start(
        config_text: str,
        env: dict[str, str] | None = None,
        notify: bool = True,
        module: str = "daemon",
    ) -> DaemonProcess:
        config = tmp_path / "config.yaml"
        config.write_text(config_text)
        daemon = DaemonProcess(config, notify_socket if notify else None, env or {}, module)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
