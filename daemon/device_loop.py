"""The frame loop's path on the GPU engines: each step's device work through a StreamPipeline
(engines.runtime.cuda_stream) with its upload ahead of its work.

On CUDA, frame N+1's camera image goes up (pinned, async, on a copy stream) while frame N is
worked on (on a compute stream: landmarks, read back for the motion estimate on the host,
then the generator), and frame N's picture comes back (pinned, async) while frame N+1 is
worked on, so the host never waits for a transfer. The price of the overlap: frames are
published one frame behind the one being worked on, each two output periods after the step
that took it. Only new, fresh driver frames are uploaded; a repeated or stale one (or none)
still gets its step, which renders from the last motion or idles, as the CPU path does.
Imported only for the GPU engines (it needs torch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from engines.runtime.cuda_stream import Finished, StreamPipeline

if TYPE_CHECKING:
    from daemon.frames import CapturedFrame
    from daemon.pipeline import Pipeline
    from daemon.stats import RollingStats

log = logging.getLogger(__name__)

TRANSFER_STATS = (("h2d", "upload"), ("d2h", "readback"))  # stream timing → stats name


@dataclass(frozen=True, slots=True)
class Job:
    """One step's input: the pipeline, the newest driver frame (None: no camera) and the
    step's time (the pipeline's `now`), kept until its frame is worked on a step later."""

    pipeline: Pipeline
    driver: CapturedFrame | None
    now: float


@dataclass(frozen=True, slots=True)
class Rendered:
    """An output frame and the capture time of the driver frame it was made from."""

    image: np.ndarray
    t_capture: float | None


class DeviceFrames:
    """The GPU engines' steps on `device`, in order: `step` takes this step's driver frame,
    works on the previous step's and returns the one before (see the module doc)."""

    def __init__(self, device: str, stats: RollingStats) -> None:
        self.device = device
        self._stats = stats
        self._stream: StreamPipeline[Job] = StreamPipeline(
            [("frame", self._work)], device, upload_ahead=True
        )
        self._uploaded_index: int | None = None

    def step(self, pipeline: Pipeline, driver: CapturedFrame | None, now: float) -> Rendered | None:
        """The frame of two steps ago; None while the stream fills. Raises what that
        frame's work raised (the stream has moved on regardless)."""
        job = Job(pipeline, driver, now)
        done = self._stream.submit(self._to_upload(job), job)
        return None if done is None else self._rendered(done)

    def flush(self) -> list[Rendered]:
        """The frames still in flight, worked on and read back, oldest first; a failed one
        is logged and left out."""
        rendered = []
        for done in self._stream.flush():
            try:
                rendered.append(self._rendered(done))
            except Exception:
                log.exception("a frame in flight failed; it is not published")
        return rendered

    def _to_upload(self, job: Job) -> np.ndarray | None:
        """The driver's pixels when the tracker will want them: a new, fresh frame."""
        driver = job.driver
        if driver is None or job.now - driver.t_capture > job.pipeline.STALE_S:
            return None
        if driver.index == self._uploaded_index:
            return None
        self._uploaded_index = driver.index
        return driver.image

    @staticmethod
    def _work(uploaded: torch.Tensor | None, job: Job) -> torch.Tensor:
        """One frame's device work: the output frame, left on the device to be read back."""
        image = job.pipeline.render_on_device(job.driver, job.now, uploaded)
        frame = image if isinstance(image, torch.Tensor) else torch.from_numpy(image)
        width, height = job.pipeline.size
        if tuple(frame.shape) != (height, width, 3) or frame.dtype != torch.uint8:
            raise ValueError(
                f"generator returned {tuple(frame.shape)} {frame.dtype}, "
                f"expected {(height, width, 3)} uint8"
            )
        if uploaded is not None and _same_memory(frame, uploaded):
            raise ValueError("the pipeline returned the camera frame itself")
        return frame

    def _rendered(self, done: Finished[Job]) -> Rendered:
        image = done.image  # raises the frame's error
        for timing, name in TRANSFER_STATS:
            if timing in done.ms:
                self._stats.record(name, done.ms[timing])
        assert done.tag is not None
        driver = done.tag.driver
        return Rendered(image, driver.t_capture if driver is not None else None)


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == (
        b.untyped_storage().data_ptr()
    )
