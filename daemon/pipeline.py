"""The pipeline and its frame loop: capture → (landmarks → motion) → generator → sinks.

The loop is paced to the output rate on the monotonic clock and never waits for the camera:
with no new driver frame it renders from the newest one it has (or idles), so the virtual
camera keeps delivering frames whatever the input does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from daemon.capture import Capture
from daemon.frames import CapturedFrame, DriverView, OutputFrame
from daemon.generator import Generator
from daemon.landmarks import LandmarkDetector, Landmarks
from daemon.motion import Motion, MotionEstimator
from daemon.sinks import SinkSet
from daemon.stats import RollingStats

log = logging.getLogger(__name__)

ERROR_LOG_INTERVAL_S = 10.0


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

    def _driver_view(self, driver: CapturedFrame | None) -> DriverView | None:
        """The driver's pixels, only for a generator configured to use them, and only
        together with the landmarks found on that very frame."""
        if not self.generator.uses_driver_pixels or driver is None or self.landmarks is None:
            return None
        if self.landmarks.index != driver.index:
            return None
        return DriverView(driver.image, self.landmarks.points)

    def track(self, driver: CapturedFrame | None, now: float) -> Motion:
        """Landmarks and motion for a new driver frame; the last motion for a repeated one."""
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
        self.landmarks = self.detector.detect(driver.image, driver.t_capture, driver.index)
        mid = time.perf_counter()
        motion = self.estimator.update(self.landmarks, driver.t_capture)
        self._stats.record("landmarks", (mid - start) * 1e3)
        self._stats.record("motion", (time.perf_counter() - mid) * 1e3)
        return motion

    def calibrate(self) -> None:
        """Take the next tracked frame as the user's neutral face."""
        if self.estimator is not None:
            self.estimator.calibrate()

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
    between frames (config reload) by assigning `capture`, `pipeline` and `fps`."""

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
        self._last_error_log = -ERROR_LOG_INTERVAL_S

    def run(self, stop: threading.Event) -> None:
        next_t = self._clock()
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

    def step(self) -> OutputFrame | None:
        """Render and publish one frame; a failing stage repeats the last good frame."""
        driver = self.capture.latest()
        now = self._clock()
        if driver is not None:
            self._stats.record("capture_age", (now - driver.t_capture) * 1e3)
        try:
            image = self.pipeline.process(driver, now)
        except Exception:
            if now - self._last_error_log >= ERROR_LOG_INTERVAL_S:
                self._last_error_log = now
                log.exception("pipeline failed; repeating the last frame")
            image = self._last_image
            if image is None:
                return None
        self._last_image = image
        frame = OutputFrame(image, driver.t_capture if driver else None, self.frames_published)
        self.sinks.post(frame)
        self.frames_published += 1
        self.heartbeat = self._clock()
        self._stats.frame_published(self.heartbeat)
        self.first_frame.set()
        return frame
