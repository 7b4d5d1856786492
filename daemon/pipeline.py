"""The pipeline and its frame loop: capture → (landmarks → motion) → generator → sinks.

The loop is paced to the output rate on the monotonic clock and never waits for the camera:
with no new driver frame it renders from the newest one it has (or idles), so the virtual
camera keeps delivering frames whatever the input does. Besides the sinks, every published
frame goes to a FrameRelay (latest wins) that the web preview reads.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from daemon.capture import Capture
from daemon.config import Config, MotionConfig
from daemon.frames import CapturedFrame, OutputFrame
from daemon.sinks import SinkSet
from daemon.stats import RollingStats
from engines.generator.build import build_generator
from engines.generator.interface import DeviceGenerator, DriverView, Generator, letterbox
from engines.landmarks.build import build_landmarks
from engines.landmarks.interface import DeviceLandmarkDetector, LandmarkDetector, Landmarks
from engines.motion.estimator import Motion, MotionEstimator

if TYPE_CHECKING:
    import torch

    from daemon.device_loop import DeviceFrames

log = logging.getLogger(__name__)


def make_generator(config: Config, avatar: str | None = None, engine: str = "cpu") -> Generator:
    """The configured generator for `avatar` (default: config.avatar.image) at the output size,
    on the chosen engines. Raises AvatarError when the avatar cannot be read or prepared."""
    spec = config.avatar.image if avatar is None else avatar
    return build_generator(
        config.generator, spec, config.output.width, config.output.height, engine
    )


def build_detector(config: Config, engine: str = "cpu") -> LandmarkDetector:
    cache = Path(config.engine_cache_dir) if config.engine_cache_dir else None
    return build_landmarks(config.tracking, engine, cache)


def build_pipeline(
    config: Config, stats: RollingStats, generator: Generator | None = None, engine: str = "cpu"
) -> Pipeline:
    """The whole per-frame path for `config`: landmarks → motion → generator, on `engine`
    (engines.runtime.select). Raises AvatarError when the avatar cannot be used (unless a generator
    is given)."""
    return Pipeline(
        make_generator(config, engine=engine) if generator is None else generator,
        stats,
        config.output.width,
        config.output.height,
        detector=build_detector(config, engine),
        estimator=MotionEstimator(config.motion),
    )


ERROR_LOG_INTERVAL_S = 10.0


class FrameRelay:
    """The newest frame, for any number of readers on other threads or event loops: latest
    wins, nothing is queued, a reader slower than the writer skips frames. Readers either
    wait on it (`wait_newer`) or register a callback that is told about each new frame."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._cond = threading.Condition()
        self._frame: OutputFrame | None = None
        self._t_posted = -math.inf
        self._listeners: list[Callable[[], None]] = []
        self.frames_posted = 0

    def post(self, frame: OutputFrame) -> None:
        with self._cond:
            self._frame, self._t_posted = frame, self._clock()
            self.frames_posted += 1
            self._cond.notify_all()
            listeners = tuple(self._listeners)
        for notify in listeners:
            notify()

    def latest(self, max_age_s: float | None = None) -> OutputFrame | None:
        """The newest frame; None when there is none or it is older than `max_age_s`."""
        with self._cond:
            if max_age_s is not None and self._clock() - self._t_posted > max_age_s:
                return None
            return self._frame

    def wait_newer(self, index: int, timeout_s: float) -> OutputFrame | None:
        """The newest frame once its index is above `index`; None on timeout."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._frame is not None and self._frame.index > index, timeout_s
            )
            frame = self._frame
        return frame if frame is not None and frame.index > index else None

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (on the posting thread; it must not block) after each new frame;
        returns the function that stops it."""
        with self._cond:
            self._listeners.append(callback)

        def stop() -> None:
            with self._cond:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return stop

    def clear(self) -> None:
        with self._cond:
            self._frame, self._t_posted = None, -math.inf


class Pipeline:
    """Turns the newest driver frame (or None: no camera) into one output frame:
    landmarks → motion → generator. The generator sees only the motion, never the camera
    frame. Parts can be swapped between frames (config reload) under the pipeline's lock."""

    STALE_S = 1.0  # a driver frame older than this counts as no frame (camera stalled)

    def __init__(
        self,
        generator: Generator,
        stats: RollingStats,
        width: int,
        height: int,
        *,
        detector: LandmarkDetector | None = None,
        estimator: MotionEstimator | None = None,
    ):
        self.generator, self._stats = generator, stats
        self.detector, self.estimator = detector, estimator
        self._shape = (height, width, 3)
        self._lock = threading.RLock()
        self._last_index: int | None = None
        self.motion = Motion()
        self.landmarks: Landmarks | None = None

    def process(self, driver: CapturedFrame | None, now: float) -> np.ndarray:
        """One output frame for time `now` (same clock as the frames' t_capture)."""
        with self._lock:
            self.motion = self.track(driver, now)
            start = time.perf_counter()
            image = self.generator.render(self.motion, self._driver_view(driver))
            self._stats.record("generator", (time.perf_counter() - start) * 1e3)
        if image.shape != self._shape or image.dtype != np.uint8:
            raise ValueError(
                f"generator returned {image.shape} {image.dtype}, expected {self._shape} uint8"
            )
        return image

    @property
    def device(self) -> str | None:
        """The torch device the tracker runs on when it takes frames already there (the GPU
        engines: the frame loop then streams, daemon.device_loop); None for the CPU path."""
        detector = self.detector
        return str(detector.device) if isinstance(detector, DeviceLandmarkDetector) else None

    def render_on_device(
        self, driver: CapturedFrame | None, now: float, uploaded: torch.Tensor | None
    ) -> torch.Tensor | np.ndarray:
        """`process` for the GPU frame loop: the tracker reads `uploaded` (driver.image
        already on the device; None when nothing new was uploaded) and the generator leaves
        its frame on the device when it can. The caller reads the frame back and checks it."""
        with self._lock:
            self.motion = self.track(driver, now, uploaded)
            start = time.perf_counter()
            generator, view = self.generator, self._driver_view(driver)
            if isinstance(generator, DeviceGenerator):
                image = generator.render_tensor(self.motion, view)
            else:
                image = generator.render(self.motion, view)
            self._stats.record("generator", (time.perf_counter() - start) * 1e3)
        return image

    def _driver_view(self, driver: CapturedFrame | None) -> DriverView | None:
        """The driver's pixels, only for a generator configured to use them, and only
        together with the landmarks found on that very frame."""
        if not self.generator.uses_driver_pixels or driver is None or self.landmarks is None:
            return None
        if self.landmarks.index != driver.index:
            return None
        return DriverView(driver.image, self.landmarks.points)

    def track(
        self, driver: CapturedFrame | None, now: float, uploaded: torch.Tensor | None = None
    ) -> Motion:
        """Landmarks and motion for a new driver frame; the last motion for a repeated one.
        `uploaded`: driver.image already on the tracker's device, if it was uploaded."""
        if self.estimator is None or self.detector is None:
            return self.motion
        if driver is not None and now - driver.t_capture > self.STALE_S:
            driver = None
        if driver is not None and driver.index == self._last_index:
            return self.motion
        if driver is None:
            self._last_index, self.landmarks = None, None
            return self.estimator.update(None, now)
        self._last_index = driver.index
        start = time.perf_counter()
        self.landmarks = self._detect(self.detector, driver, uploaded)
        mid = time.perf_counter()
        motion = self.estimator.update(self.landmarks, driver.t_capture)
        self._stats.record("landmarks", (mid - start) * 1e3)
        self._stats.record("motion", (time.perf_counter() - mid) * 1e3)
        return motion

    @staticmethod
    def _detect(
        detector: LandmarkDetector, driver: CapturedFrame, uploaded: torch.Tensor | None
    ) -> Landmarks | None:
        if uploaded is not None and isinstance(detector, DeviceLandmarkDetector):
            return detector.detect_uploaded(uploaded, driver.t_capture, driver.index)
        return detector.detect(driver.image, driver.t_capture, driver.index)

    @property
    def size(self) -> tuple[int, int]:
        """Output (width, height)."""
        return self._shape[1], self._shape[0]

    def calibrate(self) -> None:
        """Take the next tracked frame as the user's neutral face (and a generator that
        learns the driver's neutral skin learns it anew)."""
        if self.estimator is not None:
            self.estimator.calibrate()
        forget = getattr(self.generator, "forget_driver_neutral", None)
        if forget is not None:
            forget()

    def reconfigure_motion(self, config: MotionConfig) -> None:
        """New gains, smoothing and limits from the next frame on (the neutral is kept)."""
        with self._lock:
            if self.estimator is not None:
                self.estimator.reconfigure(config)

    def set_generator(self, generator: Generator, width: int, height: int) -> None:
        with self._lock:
            self.generator, self._shape = generator, (height, width, 3)

    def set_detector(self, detector: LandmarkDetector) -> None:
        with self._lock:
            old, self.detector = self.detector, detector
            self._last_index = None
        if old is not None:
            old.close()

    def close(self) -> None:
        with self._lock:
            if self.detector is not None:
                self.detector.close()
                self.detector = None


class FrameLoop:
    """Publishes one frame per output period until stopped; the components can be swapped
    between frames (config reload) by assigning `capture`, `pipeline` and `fps`.

    Each published frame goes to the sinks and to `relay`. While `external` holds a fresh
    frame (a remote peer whose avatar is published, see daemon.remote), that frame is
    published instead of the local pipeline's.

    On the CPU engines each step publishes the frame it made from the newest driver frame.
    On the GPU engines (a pipeline with a `device`) the steps go through
    daemon.device_loop, which overlaps the transfers with the work: a step publishes the
    frame made from the driver frame taken two steps before (one behind the frame being
    worked on), nothing for the first two, and the frames still in flight at stop."""

    EXTERNAL_STALE_S = 0.5

    def __init__(
        self,
        capture: Capture,
        pipeline: Pipeline,
        sinks: SinkSet,
        fps: float,
        stats: RollingStats,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.capture, self.pipeline, self.sinks, self.fps = capture, pipeline, sinks, fps
        self._stats, self._clock = stats, clock
        self.frames_published = 0
        self.heartbeat: float | None = None  # clock time of the last published frame
        self.first_frame = threading.Event()
        self.stalled = threading.Event()  # test hook: the loop stops publishing while set
        self._last_image: np.ndarray | None = None
        self._last_t_capture: float | None = None
        self._last_error_log = -ERROR_LOG_INTERVAL_S
        self._device_frames: DeviceFrames | None = None  # the GPU engines' steps
        self.relay = FrameRelay(clock)
        self.external: FrameRelay | None = None

    def run(self, stop: threading.Event) -> None:
        next_t = self._clock()
        try:
            while not stop.is_set():
                if self.stalled.is_set():
                    stop.wait(0.05)
                    next_t = self._clock()
                    continue
                self.step()
                period = 1.0 / self.fps
                next_t += period
                now = self._clock()
                if next_t < now - period:  # more than a frame late: start afresh, no burst
                    next_t = now
                stop.wait(max(0.0, next_t - now))
        finally:
            self.finish()

    def step(self) -> OutputFrame | None:
        """Render and publish one frame; a failing stage repeats the last good frame."""
        external = self.external.latest(self.EXTERNAL_STALE_S) if self.external else None
        if external is not None:
            self._end_device_frames()  # what was in flight is older: dropped
            return self._publish(self._fit(external.image), external.t_capture)
        driver = self.capture.latest()
        now = self._clock()
        if driver is not None:
            self._stats.record("capture_age", (now - driver.t_capture) * 1e3)
        if self._on_device(self.pipeline.device):
            return self._device_step(driver, now)
        try:
            image = self.pipeline.process(driver, now)
        except Exception:
            self._log_failure(now)
            image = self._last_image
            if image is None:
                return None
        return self._publish(image, driver.t_capture if driver else None)

    def finish(self) -> list[OutputFrame]:
        """Publish the frames still in flight on the GPU engines, oldest first (at stop,
        so that the last driver frames taken are not lost)."""
        frames, self._device_frames = self._device_frames, None
        rendered = frames.flush() if frames is not None else []
        return [self._publish(r.image, r.t_capture) for r in rendered]

    def _on_device(self, device: str | None) -> bool:
        """Whether this step goes through the device path: a stream on `device` (ending
        one on another device when the engines changed at a reload)."""
        if self._device_frames is not None and self._device_frames.device != device:
            self._end_device_frames()
        if device is not None and self._device_frames is None:
            from daemon.device_loop import DeviceFrames  # torch: the GPU engines only

            self._device_frames = DeviceFrames(device, self._stats)
        return device is not None

    def _device_step(self, driver: CapturedFrame | None, now: float) -> OutputFrame | None:
        """Take `driver`, publish the frame of two steps ago; nothing while the stream
        fills; the last good frame again (as made from its own driver frame) for a failed
        one."""
        assert self._device_frames is not None
        try:
            rendered = self._device_frames.step(self.pipeline, driver, now)
        except Exception:
            self._log_failure(now)
            if self._last_image is None:
                return None
            return self._publish(self._last_image, self._last_t_capture)
        if rendered is None:
            return None
        return self._publish(rendered.image, rendered.t_capture)

    def _end_device_frames(self) -> None:
        frames, self._device_frames = self._device_frames, None
        if frames is not None:
            frames.flush()

    def _log_failure(self, now: float) -> None:
        if now - self._last_error_log >= ERROR_LOG_INTERVAL_S:
            self._last_error_log = now
            log.exception("pipeline failed; repeating the last frame")

    def _fit(self, image: np.ndarray) -> np.ndarray:
        width, height = self.pipeline.size
        if image.shape[:2] == (height, width):
            return image
        return letterbox(image, width, height)

    def _publish(self, image: np.ndarray, t_capture: float | None) -> OutputFrame:
        self._last_image, self._last_t_capture = image, t_capture
        frame = OutputFrame(image, t_capture, self.frames_published)
        self.sinks.post(frame)
        self.relay.post(frame)
        self.frames_published += 1
        self.heartbeat = self._clock()
        self._stats.frame_published(self.heartbeat)
        self.first_frame.set()
        return frame
