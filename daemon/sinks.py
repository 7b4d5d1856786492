"""Sinks: where the published frames go (virtual camera, MP4 file, nowhere).

Contract of a sink backend: `open()` raises SinkError with a message that tells the user the
fix; `write(frame)` takes a BGR uint8 frame at the output size and raises on failure;
`close()` is safe to call more than once. Each sink runs on its own worker thread behind a
one-frame mailbox (latest wins), so a sink that fails, blocks or is retrying never holds up
the frame loop or the other sinks.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import ClassVar, Literal, Protocol

import av
import cv2
import numpy as np

from daemon import test_support
from daemon.config import (
    FileSinkConfig,
    NullSinkConfig,
    OutputConfig,
    SinkConfig,
    VirtualCamSinkConfig,
)
from daemon.errors import SinkError
from daemon.frames import OutputFrame
from daemon.stats import RollingStats
from daemon.v4l2 import (
    SYSFS_ROOT,
    find_device_by_label,
    list_video_devices,
    loopback_module_loaded,
    restore_output_caps,
    set_frame_rate,
)

log = logging.getLogger(__name__)

LOOPBACK_OPTIONS = 'devices=1 video_nr=10 card_label="Talking Head Cam" exclusive_caps=1'
MODPROBE_HINT = f"sudo modprobe v4l2loopback {LOOPBACK_OPTIONS}"
# The same at every boot, as commands that need no file from the repository (an installed wheel
# has none): what systemd/v4l2loopback.conf and systemd/modules-load.conf hold.
LOAD_AT_BOOT_HINT = (
    f"echo 'options v4l2loopback {LOOPBACK_OPTIONS}' | sudo tee /etc/modprobe.d/v4l2loopback.conf"
    " && echo v4l2loopback | sudo tee /etc/modules-load.d/v4l2loopback.conf"
)
SinkState = Literal["opening", "ok", "stalled", "failed", "closed"]
STALL_S = 1.0  # a write blocked for longer than this: the sink counts as stalled


class Sink(Protocol):
    name: str

    def open(self) -> None: ...

    def write(self, frame: np.ndarray) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- pixel formats


def bgr_to_i420(frame: np.ndarray) -> np.ndarray:
    """BGR → planar Y, U, V (4:2:0), as one flat buffer."""
    return cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).reshape(-1)


def bgr_to_yuyv(frame: np.ndarray) -> np.ndarray:
    """BGR → packed Y0 U Y1 V (4:2:2), as one flat buffer.

    Built from OpenCV's I420 conversion so both formats use the same BT.601 video-range
    coefficients that readers (Chrome, ffmpeg) assume; chroma rows are repeated.
    """
    height, width = frame.shape[:2]
    planes = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).reshape(-1)
    y = planes[: width * height].reshape(height, width)
    quarter = width * height // 4
    u = planes[width * height : width * height + quarter].reshape(height // 2, width // 2)
    v = planes[width * height + quarter :].reshape(height // 2, width // 2)
    packed = np.empty((height, width // 2, 4), np.uint8)
    packed[:, :, 0] = y[:, 0::2]
    packed[:, :, 2] = y[:, 1::2]
    packed[:, :, 1] = np.repeat(u, 2, axis=0)
    packed[:, :, 3] = np.repeat(v, 2, axis=0)
    return packed.reshape(-1)


# ---------------------------------------------------------------- backends


class VirtualCamSink:
    """A v4l2loopback device through pyvirtualcam, found by its card label."""

    backend: ClassVar[str] = "v4l2loopback"  # pyvirtualcam's backend name

    def __init__(
        self, config: VirtualCamSinkConfig, output: OutputConfig, sysfs_root: Path = SYSFS_ROOT
    ):
        self.config, self.output, self._sysfs_root = config, output, sysfs_root
        self.name = f"virtualcam({config.device if config.device != 'auto' else config.label})"
        self.device: str | None = None
        self._cam = None
        self._convert = bgr_to_i420 if config.pixel_format == "I420" else bgr_to_yuyv

    def resolve_device(self) -> str:
        """`device: auto` → the loopback device labelled `label`; errors say how to fix it."""
        if self.config.device != "auto":
            if not os.path.exists(self.config.device):
                raise SinkError(
                    f"{self.config.device} does not exist; load v4l2loopback: {MODPROBE_HINT}"
                )
            return self.config.device
        found = find_device_by_label(self.config.label, self._sysfs_root)
        if found is not None:
            return found.node
        if not loopback_module_loaded(self._sysfs_root):
            raise SinkError(
                f"v4l2loopback is not loaded (no virtual camera); run: {MODPROBE_HINT}"
                " — or 'make install-service' for the permanent setup"
            )
        others = [
            f"{d.node} {d.name!r}" for d in list_video_devices(self._sysfs_root) if d.is_loopback
        ]
        raise SinkError(
            f"no v4l2loopback device is labelled {self.config.label!r} (found: "
            f"{', '.join(others) or 'none'}); reload the module with "
            f'card_label="{self.config.label}" or set this sink\'s device/label'
        )

    def open(self) -> None:
        node = self.resolve_device()
        if not os.access(node, os.R_OK | os.W_OK):
            raise SinkError(
                f"no permission to open {node}; add your user to the 'video' group "
                "(sudo usermod -aG video $USER, then log in again)"
            )
        try:
            self._cam = self._open_camera(node)
        except RuntimeError as exc:
            if "not a video output device" not in str(exc):
                raise SinkError(f"cannot open {node}: {exc}") from None
            # v4l2loopback 0.12.x after a writer closed: restore its output caps, try again
            log.warning(
                "%s: %s is stuck (v4l2loopback 0.12 after a writer closed); "
                "restoring its output capability",
                self.name,
                node,
            )
            restore_output_caps(node)
            try:
                self._cam = self._open_camera(node)
            except RuntimeError as again:
                raise SinkError(
                    f"cannot open {node}: {again}; reload the module: "
                    f"sudo modprobe -r v4l2loopback && {MODPROBE_HINT}"
                ) from None
        if not set_frame_rate(node, self.output.fps):
            log.warning("%s: %s did not take the rate %g fps", self.name, node, self.output.fps)
        self.device = node

    def _open_camera(self, node: str):
        import pyvirtualcam

        out, fmt = self.output, pyvirtualcam.PixelFormat[self.config.pixel_format]
        return pyvirtualcam.Camera(
            out.width, out.height, out.fps, fmt=fmt, device=node, backend=self.backend
        )

    def write(self, frame: np.ndarray) -> None:
        if self._cam is None:
            raise SinkError(f"{self.name} is not open")
        self._cam.send(self._convert(frame))

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            cam.close()


class FileSink:
    """A video file at the output size and rate, written with PyAV (FFmpeg): H.264 (yuv420p,
    CRF 18) that every player plays, or FFV1, lossless, for measuring against the avatar."""

    # zerolatency: no lookahead or B-frames held back, so closing (SIGTERM) never waits on
    # the encoder
    H264_OPTIONS: ClassVar[dict[str, str]] = {
        "crf": "18",
        "preset": "veryfast",
        "tune": "zerolatency",
    }

    def __init__(self, config: FileSinkConfig, output: OutputConfig):
        self.config, self.output = config, output
        self.codec = file_codec(config)
        self.name = f"file({config.path})"
        self._container: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None
        self.frames_written = 0

    def open(self) -> None:
        path = Path(self.config.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create the folder {path.parent}: {exc.strerror}") from None
        try:
            with path.open("ab"):  # writable, and a file (av.open only finds out later)
                pass
            container = av.open(str(path), "w")
        except (OSError, ValueError, av.FFmpegError) as exc:
            raise SinkError(
                f"cannot write {path} ({exc}); check that the folder is writable and the "
                "file ends in .mp4, .mkv or .mov"
            ) from None
        try:
            stream = self._add_stream(container)
        except (ValueError, av.FFmpegError) as exc:
            container.close()
            raise SinkError(
                f"cannot write {path} with {self.codec} ({exc}); use .mkv for ffv1, .mp4 for h264"
            ) from None
        stream.width, stream.height = self.output.width, self.output.height
        self._container, self._stream = container, stream

    def _add_stream(self, container: av.container.OutputContainer) -> av.VideoStream:
        rate = Fraction(self.output.fps).limit_denominator(1001)
        if self.codec == "ffv1":
            stream = container.add_stream("ffv1", rate=rate)
            stream.pix_fmt = "bgr0"  # lossless: the very pixels published
        else:
            stream = container.add_stream("libx264", rate=rate)
            stream.pix_fmt = "yuv420p"
            stream.options = dict(self.H264_OPTIONS)
        return stream

    def write(self, frame: np.ndarray) -> None:
        if self._container is None or self._stream is None:
            raise SinkError(f"{self.name} is not open")
        expected = (self.output.height, self.output.width, 3)
        if frame.shape != expected:
            raise SinkError(f"unexpected frame shape: {frame.shape} != {expected}")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        container, self._container = self._container, None
        stream, self._stream = self._stream, None
        if container is None:
            return
        try:
            if stream is not None:
                for packet in stream.encode():  # the frames the encoder still holds
                    container.mux(packet)
        finally:
            container.close()


def file_codec(config: FileSinkConfig) -> str:
    """The codec a file sink writes: the configured one, or by the file's extension."""
    if config.codec != "auto":
        return config.codec
    return "ffv1" if Path(config.path).suffix.lower() == ".mkv" else "h264"


class NullSink:
    """Discards every frame."""

    name = "null"

    def __init__(self, config: NullSinkConfig, output: OutputConfig):
        self.config = config

    def open(self) -> None:
        pass

    def write(self, frame: np.ndarray) -> None:
        pass

    def close(self) -> None:
        pass


def build_sink(config: SinkConfig, output: OutputConfig, sysfs_root: Path = SYSFS_ROOT) -> Sink:
    if isinstance(config, VirtualCamSinkConfig):
        return VirtualCamSink(config, output, sysfs_root)
    if isinstance(config, FileSinkConfig):
        return FileSink(config, output)
    if isinstance(config, NullSinkConfig):
        return NullSink(config, output)
    support = test_support.loaded()  # a sink type only the test support knows
    assert support is not None, f"sink type {config.type!r} without the test support"
    return support.open_sink(config, output)


# ---------------------------------------------------------------- isolation


@dataclass(frozen=True, slots=True)
class SinkStatus:
    name: str
    state: SinkState
    detail: str
    frames_written: int
    frames_dropped: int


class SinkWorker:
    """Runs one sink on its own thread: opens it (retrying with backoff), writes the newest
    frame, reopens after a failure (with the same backoff). A failure is logged once per
    state change: a sink that reopens fine but keeps failing to write stays `failed` until
    a write succeeds. A write blocked for over STALL_S shows as `stalled` (check_stalled)."""

    def __init__(
        self, sink: Sink, config: SinkConfig, stats: RollingStats, retry_max_s: float = 5.0
    ):
        self.sink, self.config, self._stats = sink, config, stats
        self._retry_max_s = retry_max_s
        self._cond = threading.Condition()
        self._pending: OutputFrame | None = None
        self._stop = threading.Event()
        self.state: SinkState = "opening"
        self.detail = ""
        self.frames_written = 0
        self.frames_dropped = 0
        self._write_started: float | None = None  # monotonic time of the write in progress
        self._ok_detail = "publishing"
        self._thread = threading.Thread(target=self._run, name=f"sink:{sink.name}", daemon=True)
        self._thread.start()

    def post(self, frame: OutputFrame) -> None:
        """Hand over the newest frame; an unwritten older one is dropped (and counted)."""
        with self._cond:
            if self._pending is not None and self.state in ("ok", "stalled"):
                self.frames_dropped += 1
            self._pending = frame
            self._cond.notify()

    def status(self) -> SinkStatus:
        return SinkStatus(
            self.sink.name, self.state, self.detail, self.frames_written, self.frames_dropped
        )

    def check_stalled(self, now: float | None = None) -> bool:
        """Called by the supervisor: a write blocked for over STALL_S turns `ok` into
        `stalled` (logged once); the write's return turns it back."""
        now = time.monotonic() if now is None else now
        with self._cond:
            started = self._write_started
            if self.state == "ok" and started is not None and now - started > STALL_S:
                self._set_state(
                    "stalled",
                    f"a write has been blocked for over {STALL_S:g} s; newer frames are dropped",
                )
            return self.state == "stalled"

    def request_stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify()

    def close(self, timeout_s: float = 0.5) -> None:
        self.request_stop()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("%s: still busy after %.1f s; leaving it behind", self.sink.name, timeout_s)

    def _run(self) -> None:
        first_retry_s = min(0.5, self._retry_max_s)
        retry_s = first_retry_s
        is_open = False
        try:
            while not self._stop.is_set():
                if not is_open:
                    is_open = self._try_open()
                    if not is_open:
                        self._stop.wait(retry_s)
                        retry_s = min(retry_s * 2, self._retry_max_s)
                        continue
                frame = self._take()
                if frame is None:
                    continue
                if self._write(frame):
                    retry_s = first_retry_s
                else:  # closed after a failed write: reopen after a pause, not at once
                    is_open = False
                    self._stop.wait(retry_s)
                    retry_s = min(retry_s * 2, self._retry_max_s)
        finally:
            self._close_sink()
            self.state = "closed"

    def _try_open(self) -> bool:
        try:
            self.sink.open()
        except Exception as exc:
            detail = str(exc) if isinstance(exc, SinkError) else f"{type(exc).__name__}: {exc}"
            self._set_state("failed", f"{detail}; retrying every ≤{self._retry_max_s:g} s")
            self._close_sink()
            return False
        where = getattr(self.sink, "device", None)
        self._ok_detail = f"publishing to {where}" if where else "publishing"
        if self.state != "failed":  # after a failure, `ok` waits for a write that works
            self._set_state("ok", self._ok_detail)
        return True

    def _take(self) -> OutputFrame | None:
        with self._cond:
            self._cond.wait_for(lambda: self._pending is not None or self._stop.is_set(), 0.5)
            frame, self._pending = self._pending, None
        return frame

    def _write(self, frame: OutputFrame) -> bool:
        start = time.perf_counter()
        with self._cond:
            self._write_started = time.monotonic()
        try:
            self.sink.write(frame.image)
        except Exception as exc:
            with self._cond:
                self._write_started = None
                self._set_state("failed", f"write failed ({type(exc).__name__}: {exc}); reopening")
            self._close_sink()
            return False
        self._stats.record(f"sink:{self.sink.name}", (time.perf_counter() - start) * 1e3)
        with self._cond:
            self._write_started = None
            self.frames_written += 1
            if self.state != "ok":  # recovered (from a failure or a stall)
                self._set_state("ok", self._ok_detail)
        return True

    def _close_sink(self) -> None:
        try:
            self.sink.close()
        except Exception as exc:
            log.warning("%s: error while closing: %s", self.sink.name, exc)

    def _set_state(self, state: SinkState, detail: str) -> None:
        changed = (state, detail) != (self.state, self.detail)
        self.state, self.detail = state, detail
        if changed:
            level = {"failed": logging.ERROR, "stalled": logging.WARNING}.get(state, logging.INFO)
            log.log(level, "%s: %s", self.sink.name, detail)


class SinkSet:
    """All configured sinks; `post` fans one frame out to every worker."""

    def __init__(self, stats: RollingStats, sysfs_root: Path = SYSFS_ROOT):
        self._stats, self._sysfs_root = stats, sysfs_root
        self._workers: tuple[SinkWorker, ...] = ()
        self._output: OutputConfig | None = None

    def configure(self, configs: Sequence[SinkConfig], output: OutputConfig) -> list[str]:
        """Keep workers whose config (and the output format) is unchanged, replace the rest.
        Returns the names of sinks that were (re)started."""
        unmatched = list(configs) if output == self._output else []
        keep = []
        for worker in self._workers:
            if worker.config in unmatched:  # each config matches one worker at most
                unmatched.remove(worker.config)
                keep.append(worker)
            else:
                worker.close()
        wanted = list(configs)
        for worker in keep:
            wanted.remove(worker.config)
        started = [
            SinkWorker(build_sink(c, output, self._sysfs_root), c, self._stats) for c in wanted
        ]
        self._workers = tuple(keep + started)
        self._output = output
        return [w.sink.name for w in started]

    @property
    def workers(self) -> tuple[SinkWorker, ...]:
        return self._workers

    def post(self, frame: OutputFrame) -> None:
        for worker in self._workers:
            worker.post(frame)

    def statuses(self) -> list[SinkStatus]:
        return [w.status() for w in self._workers]

    def check_stalled(self) -> None:
        """The supervisor's periodic look for sinks blocked in a write (see SinkWorker)."""
        now = time.monotonic()
        for worker in self._workers:
            worker.check_stalled(now)

    def request_stop(self) -> None:
        """Tell every worker to stop (close() then waits for them)."""
        for worker in self._workers:
            worker.request_stop()

    def close(self, timeout_s: float = 0.5) -> None:
        workers, self._workers = self._workers, ()
        for worker in workers:  # all stop together, so the total wait stays one timeout
            worker.request_stop()
        deadline = time.monotonic() + timeout_s  # shared: two stuck sinks wait once, not twice
        for worker in workers:
            worker.close(max(0.0, deadline - time.monotonic()))
