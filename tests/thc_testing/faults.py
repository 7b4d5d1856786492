"""Fault injection for the reliability tests and the soak: test support, which exists in a
daemon only while the test support is on (thc_testing.plugin, daemon/test_support.py).

Two pieces run through the daemon's real code paths (Capture's reader thread, SinkWorker),
each steered by a small control file holding one word. `set_fault` rewrites it atomically;
an absent or empty file means `ok`.

The capture source `fault:VIDEO` (capture.source) is a FaultInjectingReader: the real
VideoFileReader of VIDEO (so the frames are real video), steered by `VIDEO.fault`
(`control_path(VIDEO)`):

    ok      frames flow
    noface  frames flow, pixelated so that no face can be found (the user stepped away)
    stall   read() blocks until the word changes (a frozen camera)
    error   every read fails (CaptureError); opening still works
    vanish  the camera is unplugged: a running read fails, opening fails (DeviceError)

The sink `{type: fault, control: PATH}` is a FaultSink, holding a real file handle while
open, like a device:

    ok      frames are taken (and shown to the callbacks registered with `watch`)
    fail    write raises SinkError
    raise   write raises RuntimeError (a bug in a backend)
    block   write blocks until the word changes (a wedged device)
    refuse  open raises SinkError (the device is gone)

When `CONTROL.frames` exists (`frames_path`), the sink appends the CLOCK_MONOTONIC time of
every frame it takes to it, one per line, so a test in another process can see the rate.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from daemon.capture import VideoFileReader
from daemon.config import OutputConfig
from daemon.errors import CaptureError, DeviceError, SinkError
from engines.section import Section

FAULT_PREFIX = "fault:"  # capture.source "fault:VIDEO"


class FaultSinkConfig(Section):
    """Test support: a sink that fails, raises or blocks on command.
    A sink type only while the test support is on (thc_testing.plugin)."""

    type: Literal["fault"]
    control: str = Field(
        description="control file holding one word: ok, fail, raise, block or refuse; "
        "relative paths are relative to the config file"
    )


CAPTURE_FAULTS = ("ok", "noface", "stall", "error", "vanish")
SINK_FAULTS = ("ok", "fail", "raise", "block", "refuse")
POLL_S = 0.01  # how often a stalled read or a blocked write looks at its control file

_watchers: dict[str, list[Callable[[np.ndarray], None]]] = {}
_watchers_lock = threading.Lock()


def control_path(video: str | os.PathLike[str]) -> Path:
    """The control file of the capture source `fault:VIDEO`."""
    return Path(f"{os.fspath(video)}.fault")


def set_fault(control: str | os.PathLike[str], word: str) -> None:
    """Write `word` to a control file atomically (a reader never sees half a word)."""
    if word not in CAPTURE_FAULTS + SINK_FAULTS:
        raise ValueError(f"unknown fault {word!r}")
    path = Path(control)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(word + "\n")
    tmp.replace(path)


def frames_path(control: str | os.PathLike[str]) -> Path:
    """Where a FaultSink records the time of each frame, when the file exists."""
    return Path(f"{os.fspath(control)}.frames")


def read_fault(control: str | os.PathLike[str]) -> str:
    try:
        return Path(control).read_text().strip() or "ok"
    except FileNotFoundError:
        return "ok"


def watch(control: str | os.PathLike[str], callback: Callable[[np.ndarray], None]):
    """Call `callback(frame)` (on the sink's thread) for every frame a FaultSink with this
    control file takes; returns the function that stops it. For in-process checks."""
    key = os.path.abspath(control)
    with _watchers_lock:
        _watchers.setdefault(key, []).append(callback)

    def stop() -> None:
        with _watchers_lock:
            callbacks = _watchers.get(key, [])
            if callback in callbacks:
                callbacks.remove(callback)

    return stop


def pixelate(frame: np.ndarray) -> np.ndarray:
    """The frame as 8x6 blocks: the room is still there, a face cannot be found."""
    height, width = frame.shape[:2]
    small = cv2.resize(frame, (8, 6), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


class FaultInjectingReader:
    """A FrameReader over a real video file that stalls, errs or vanishes on command."""

    def __init__(self, video: str):
        self.control = control_path(video)
        if read_fault(self.control) == "vanish":
            raise DeviceError(f"{video} does not exist (injected fault: vanish); plug it in")
        self._inner = VideoFileReader(video)
        self.fps = self._inner.fps
        self.description = f"{self._inner.description} (fault injection: {self.control.name})"

    def read(self) -> np.ndarray | None:
        word = read_fault(self.control)
        while word == "stall":  # a frozen camera: the read just does not return
            time.sleep(POLL_S)
            word = read_fault(self.control)
        if word == "error":
            raise CaptureError("the camera returned a failed read (injected fault: error)")
        if word == "vanish":
            raise CaptureError("the camera stopped delivering frames (injected fault: vanish)")
        if word not in CAPTURE_FAULTS:
            raise CaptureError(f"unknown capture fault {word!r} in {self.control}")
        frame = self._inner.read()
        if frame is not None and word == "noface":
            return pixelate(frame)
        return frame

    def close(self) -> None:
        self._inner.close()


class FaultSink:
    """A sink that takes frames like a device and fails, raises or blocks on command."""

    def __init__(self, config: FaultSinkConfig, output: OutputConfig):
        self.config = config
        self.name = f"fault({Path(config.control).name})"
        self._shape = (output.height, output.width, 3)
        self._key = os.path.abspath(config.control)
        self._fd: int | None = None
        self._record: int | None = None
        self.opens = self.closes = self.frames_written = 0

    def open(self) -> None:
        if read_fault(self.config.control) == "refuse":
            raise SinkError(f"{self.name}: the device refused to open (injected fault: refuse)")
        self._fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)  # a real handle
        self.opens += 1
        record = frames_path(self.config.control)
        if record.is_file():
            self._record = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def write(self, frame: np.ndarray) -> None:
        if self._fd is None:
            raise SinkError(f"{self.name} is not open")
        if frame.shape != self._shape:
            raise SinkError(f"unexpected frame shape: {frame.shape} != {self._shape}")
        word = read_fault(self.config.control)
        while word == "block":  # a wedged device: the write just does not return
            time.sleep(POLL_S)
            word = read_fault(self.config.control)
        if word == "fail":
            raise SinkError("write failed (injected fault: fail)")
        if word == "raise":
            raise RuntimeError("a bug in a sink backend (injected fault: raise)")
        with _watchers_lock:
            callbacks = tuple(_watchers.get(self._key, ()))
        for callback in callbacks:
            callback(frame)
        if self._record is not None:
            os.write(self._record, f"{time.monotonic():.6f}\n".encode())
        self.frames_written += 1

    def close(self) -> None:
        fd, self._fd = self._fd, None
        record, self._record = self._record, None
        if record is not None:
            os.close(record)
        if fd is not None:
            os.close(fd)
            self.closes += 1
