"""Capture: the driving video, from a camera, a video file or a still image.

A reader thread keeps only the newest frame (no queue build-up, no stale frames); a lost or
missing camera is retried with backoff while the rest of the daemon keeps publishing, and
each state change is logged once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np

from daemon import test_support
from daemon.config import DEFAULT_LABEL, IMAGE_SUFFIXES, CaptureConfig
from daemon.errors import CaptureError, DeviceError, TalkingHeadCamError
from daemon.frames import CapturedFrame
from daemon.v4l2 import SYSFS_ROOT, can_capture, list_video_devices

log = logging.getLogger(__name__)

SourceKind = Literal["camera", "video", "image", "test"]
CaptureState = Literal["starting", "streaming", "stalled", "missing", "lost", "ended", "stopped"]
_FIRST_RETRY_S = 0.5
STALL_S = 1.0  # no new frame for this long: the source counts as stalled (Pipeline.STALE_S)


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """What `capture.source` names: a camera (index, /dev path or auto) or a file."""

    kind: SourceKind
    target: int | str

    def __str__(self) -> str:
        return (
            str(self.target)
            if self.kind != "camera" or isinstance(self.target, str)
            else (f"camera {self.target}")
        )


def classify_source(source: int | str) -> SourceSpec:
    if isinstance(source, int) or source == "auto" or source.startswith("/dev/"):
        return SourceSpec("camera", source)
    support = test_support.loaded()
    if support is not None and support.claims_source(source):
        return SourceSpec("test", source)
    kind: SourceKind = "image" if source.lower().endswith(IMAGE_SUFFIXES) else "video"
    return SourceSpec(kind, source)


def resolve_auto_camera(own_labels: Iterable[str], sysfs_root: Path = SYSFS_ROOT) -> str:
    """The first capture device that is not our own virtual camera: real cameras first,
    other virtual cameras (OBS and the like) only when there is no real one."""
    own = set(own_labels)
    devices = sorted(list_video_devices(sysfs_root), key=lambda d: d.is_loopback)  # stable
    for device in devices:
        if device.name in own:
            continue
        if can_capture(device.node) is False:  # metadata nodes, output-only loopbacks
            continue
        return device.node
    raise DeviceError(
        "no camera found (no /dev/video* capture device besides our virtual camera); "
        "plug in a webcam, or set capture.source to a device, video file or image"
    )


class FrameReader(Protocol):
    """A blocking source of BGR frames. read() returns None at the end of a file."""

    fps: float | None  # the source's own rate when it has one (files)

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class CameraReader:
    """A V4L2 camera through OpenCV, asked for MJPG at the configured size and rate."""

    fps: float | None = None

    def __init__(self, target: int | str, config: CaptureConfig):
        if isinstance(target, str) and not os.path.exists(target):
            raise DeviceError(f"{target} does not exist; plug in the camera or fix capture.source")
        self._cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
        if not self._cap.isOpened():
            self._cap.release()
            raise DeviceError(
                f"cannot open camera {target}; is it in use by another program, or is your user "
                "missing from the 'video' group?"
            )
        self._cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"MJPG"))
        self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
        self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
        self._cap.set(cv2.CAP_PROP_FPS, config.fps)
        self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.description = (
            f"{int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x"
            f"{int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))} @ "
            f"{self._cap.get(cv2.CAP_PROP_FPS):g} fps"
        )

    def read(self) -> np.ndarray:
        ok, frame = self._cap.read()
        if not ok or frame is None:
            raise CaptureError("the camera stopped delivering frames (unplugged?)")
        return frame

    def close(self) -> None:
        self._cap.release()


class VideoFileReader:
    """Every frame of a video file, in order (also used by `render`, whose errors name the
    argument that gave the file as `field`)."""

    def __init__(self, path: str, field: str = "capture.source"):
        if not Path(path).is_file():
            raise CaptureError(f"video file {path} not found; fix {field}")
        self._cap = cv2.VideoCapture(path)
        if not self._cap.isOpened():
            self._cap.release()
            raise CaptureError(
                f"cannot decode video file {path}; use an MP4/MKV/AVI file for {field}"
            )
        rate = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps: float | None = rate if 0 < rate < 1000 else None
        self.frame_count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.size = (
            int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
        self.description = (
            f"{int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x"
            f"{int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))} @ {rate:g} fps"
        )

    def read(self) -> np.ndarray | None:
        ok, frame = self._cap.read()
        return frame if ok else None

    def close(self) -> None:
        self._cap.release()


class ImageReader:
    """A still image, delivered again and again."""

    fps: float | None = None

    def __init__(self, path: str):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise CaptureError(f"cannot read image {path}; fix capture.source (PNG or JPEG)")
        self._image = image
        self.description = f"{image.shape[1]}x{image.shape[0]} still image"

    def read(self) -> np.ndarray:
        return self._image

    def close(self) -> None:
        pass


def open_reader(
    spec: SourceSpec,
    config: CaptureConfig,
    own_labels: Iterable[str],
    sysfs_root: Path = SYSFS_ROOT,
) -> FrameReader:
    if spec.kind == "video":
        return VideoFileReader(str(spec.target))
    if spec.kind == "image":
        return ImageReader(str(spec.target))
    if spec.kind == "test":
        support = test_support.loaded()
        assert support is not None, "a test source without the test support"
        return support.open_source(str(spec.target))
    target = resolve_auto_camera(own_labels, sysfs_root) if spec.target == "auto" else spec.target
    return CameraReader(target, config)


class Capture:
    """Owns one source and its reader thread; `latest()` is the newest frame or None.

    The source is opened on the thread, so a missing camera never blocks the daemon: the
    state goes to `missing`, the thread retries with backoff (up to capture.retry_max_s),
    and the frame loop keeps publishing the idle avatar meanwhile.
    """

    def __init__(
        self,
        config: CaptureConfig,
        *,
        own_labels: Iterable[str] = (DEFAULT_LABEL,),
        sysfs_root: Path = SYSFS_ROOT,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.spec = classify_source(config.source)
        self._own_labels = tuple(own_labels)
        self._sysfs_root = sysfs_root
        self._clock = clock
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._latest: CapturedFrame | None = None
        self._count = 0
        self.state: CaptureState = "starting"
        self.detail = ""
        self._thread = threading.Thread(target=self._run, name=f"capture:{self.spec}", daemon=True)

    def __repr__(self) -> str:
        return f"Capture({self.spec})"

    def start(self) -> Capture:
        self._thread.start()
        return self

    def latest(self) -> CapturedFrame | None:
        return self._latest

    def wait_for_frame(self, after_index: int = -1, timeout_s: float = 5.0) -> CapturedFrame | None:
        """The first frame newer than `after_index`, or None on timeout/end (for tests, tools)."""
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    (self._latest is not None and self._latest.index > after_index)
                    or self.state in ("ended", "stopped")
                ),
                timeout_s,
            )
            frame = self._latest
        return frame if frame is not None and frame.index > after_index else None

    def check_stalled(self) -> bool:
        """Called by the supervisor: a streaming source with no new frame for STALL_S goes
        to `stalled` (logged once); its next frame brings it back to `streaming`."""
        with self._cond:
            latest = self._latest
            if (
                self.state == "streaming"
                and latest is not None
                and self._clock() - latest.t_capture > STALL_S
            ):
                self._set_state(
                    "stalled",
                    f"no new frame for over {STALL_S:g} s; publishing the idle avatar meanwhile",
                )
            return self.state == "stalled"

    def request_stop(self) -> None:
        """Tell the reader thread to stop (close() then waits for it)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def close(self, timeout_s: float = 0.5) -> None:
        self.request_stop()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("%r: reader still busy after %.1f s; leaving it behind", self, timeout_s)
            return
        self._set_state("stopped", "")

    # ------------------------------------------------------------ the reader thread

    def _run(self) -> None:
        first_retry_s = min(_FIRST_RETRY_S, self.config.retry_max_s)
        retry_s = first_retry_s
        while not self._stop.is_set():
            delivered = self._open_and_pump()
            if self.state == "ended":
                return
            if delivered:  # a working source rewound or broke: reopen at once
                retry_s = first_retry_s
                continue
            self._stop.wait(retry_s)  # never a busy loop on a source that yields nothing
            retry_s = min(retry_s * 2, self.config.retry_max_s)

    def _open_and_pump(self) -> int:
        """Open the source and read it until it ends or fails; returns frames delivered."""
        try:
            reader = open_reader(self.spec, self.config, self._own_labels, self._sysfs_root)
        except TalkingHeadCamError as exc:
            self._set_state(
                "missing",
                f"{exc}; retrying every ≤{self.config.retry_max_s:g} s,"
                " publishing the idle avatar meanwhile",
            )
            return 0
        except Exception:  # a bug or a library failure must not kill capture for good
            log.exception("%r: unexpected error opening the source", self)
            return 0
        delivered = [0]
        try:
            self._pump(reader, delivered)
        except TalkingHeadCamError as exc:
            self._drop_latest()
            self._set_state("lost", f"{exc}; reopening")
        except Exception:
            self._drop_latest()
            log.exception("%r: unexpected error reading the source", self)
        finally:
            reader.close()
        return delivered[0]

    def _pump(self, reader: FrameReader, delivered: list[int]) -> None:
        """Read until stopped, end of file, or an error; pace files to their own rate.
        `delivered[0]` counts the frames published (kept even when a read raises)."""
        rate = reader.fps or (self.config.fps if self.spec.kind != "camera" else None)
        period = 1.0 / rate if rate else 0.0
        next_t = self._clock()
        while not self._stop.is_set():
            image = reader.read()
            if image is None and not delivered[0]:
                raise CaptureError(f"{self.spec} has no readable frames")
            if image is None:  # end of a video file
                if self.config.loop:
                    return  # the caller reopens the file from its start
                self._set_state("ended", "end of the video file; publishing the idle avatar")
                return
            self._publish(image, getattr(reader, "description", ""))
            delivered[0] += 1
            if period:
                next_t += period
                delay = next_t - self._clock()
                if delay < -period:  # fell behind (a slow decode): do not try to catch up
                    next_t = self._clock()
                elif delay > 0:
                    self._stop.wait(delay)

    def _publish(self, image: np.ndarray, description: str) -> None:
        image.setflags(write=False)
        with self._cond:
            if self.state != "streaming":  # state (and its log line) before anyone sees it
                self._set_state("streaming", description)
            self._latest = CapturedFrame(image, self._clock(), self._count)
            self._count += 1
            self._cond.notify_all()

    def _drop_latest(self) -> None:
        with self._cond:
            self._latest = None

    def _set_state(self, state: CaptureState, detail: str) -> None:
        """Record the state; log only when it (or its reason) changes, never per attempt."""
        with self._cond:  # the supervisor's check_stalled sets states too
            if (state, detail) == (self.state, self.detail):
                return
            self.state, self.detail = state, detail
            level = logging.WARNING if state in ("missing", "lost", "stalled") else logging.INFO
            log.log(level, "%r: %s%s", self, state, f": {detail}" if detail else "")
            self._cond.notify_all()
