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
from daemon.frames import CapturedFrame, OutputFrame
from daemon.generator import Generator
from daemon.sinks import SinkSet
from daemon.stats import RollingStats

log = logging.getLogger(__name__)

ERROR_LOG_INTERVAL_S = 10.0


class Pipeline:
    """Turns the newest driver frame (or None: idle) into one output frame."""

    def __init__(self, generator: Generator, stats: RollingStats, width: int, height: int):
        self.generator, self._stats = generator, stats
        self._shape = (height, width, 3)

    def process(self, driver: CapturedFrame | None) -> np.ndarray:
        start = time.perf_counter()
        image = self.generator.render(driver)
        self._stats.record("generator", (time.perf_counter() - start) * 1e3)
        if image.shape != self._shape or image.dtype != np.uint8:
            raise ValueError(
                f"generator returned {image.shape} {image.dtype}, expected {self._shape} uint8"
            )
        return image


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
            image = self.pipeline.process(driver)
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
