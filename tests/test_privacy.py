"""The privacy invariant as a property: for random sequences of camera faults (stall, error,
vanish and return, a clock jump past the stale limit) and of the face being there or not,
no frame the real frame loop publishes is ever (close to) a camera frame.

The camera is a real face video of another person than the avatar (capture source
`fault:VIDEO`, tests/thc_testing/faults.py), read by the real Capture thread; the real Pipeline
(MediaPipe landmarks → motion → mesh generator) and FrameLoop make every frame."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import read_video, wait_until, write_video
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from thc_testing.faults import control_path, pixelate, set_fault

from daemon.capture import Capture
from daemon.config import CaptureConfig, Config
from daemon.pipeline import FrameLoop, Pipeline, build_pipeline
from daemon.sinks import SinkSet
from daemon.stats import RollingStats

SIZE = (320, 240)  # camera and output alike, so a leaked frame would match pixel for pixel
THUMB = (80, 60)
LEAK_MAD = 30.0  # closer than this (mean abs difference, 0-255) to a camera frame is a leak
LEAK_CORR = 0.8  # or more correlated than this

pytestmark = pytest.mark.usefixtures("test_support")


def thumb(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, THUMB, interpolation=cv2.INTER_AREA).astype(np.float32)


class CameraFrames:
    """Every frame the camera can deliver (as they are and with the face pixelated away),
    for comparing a published frame against all of them at once."""

    def __init__(self, frames: list[np.ndarray]):
        thumbs = np.stack([thumb(f) for f in frames + [pixelate(f) for f in frames]])
        self._thumbs = thumbs.reshape(len(thumbs), -1)
        centred = self._thumbs - self._thumbs.mean(1, keepdims=True)
        self._unit = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-6)

    def closeness(self, image: np.ndarray) -> tuple[float, float]:
        """(smallest mean abs difference, largest correlation) to any camera frame."""
        t = thumb(image).reshape(-1)
        mad = np.abs(self._thumbs - t).mean(1)
        centred = t - t.mean()
        corr = self._unit @ (centred / max(float(np.linalg.norm(centred)), 1e-6))
        return float(mad.min()), float(corr.max())

    def assert_not_a_camera_frame(self, image: np.ndarray) -> None:
        mad, corr = self.closeness(image)
        assert mad > LEAK_MAD and corr < LEAK_CORR, (
            f"published frame close to the camera: {mad=:.1f} {corr=:.2f}"
        )


class SkewClock:
    """The monotonic clock, plus jumps forward (a suspended laptop, a long stall)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory: pytest.TempPathFactory, other_face: np.ndarray) -> Path:
    folder = tmp_path_factory.mktemp("privacy")
    return write_video(folder / "camera.mp4", other_face, frames=20, fps=60, size=SIZE)


@pytest.fixture(scope="module")
def camera_frames(camera_clip: Path) -> CameraFrames:
    return CameraFrames(read_video(camera_clip)[0])


@pytest.fixture(scope="module")
def pipelines() -> Iterator[dict[str, Pipeline]]:
    """The mesh generator three ways: lent no camera frame at all (synthetic mouth, skin
    detail off), the default (it reads the driver's skin for its wrinkles: a band-passed
    luminance ratio), and the one that shows the driver's own mouth interior (the only path
    by which camera pixels themselves reach a frame)."""
    made = {}
    for name, mouth, skin in VARIANTS:
        config = Config.model_validate(
            {
                "output": {"width": SIZE[0], "height": SIZE[1]},
                "generator": {"type": "mesh", "mouth_interior": mouth, "skin_detail": skin},
                "motion": {"lost_grace_s": 0.05, "idle_ease_s": 0.1},
            }
        )
        made[name] = build_pipeline(config, RollingStats())
    assert not made["private"].generator.uses_driver_pixels
    yield made
    for pipeline in made.values():
        pipeline.close()


VARIANTS = (  # name, mouth_interior, skin_detail
    ("private", "synthetic", "off"),
    ("default", "synthetic", "driver"),
    ("mouth", "driver", "driver"),
)
ACTIONS = ("face", "noface", "stall", "error", "vanish", "jump")
steps = st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(1, 6)), min_size=1, max_size=6)


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sequence=steps, variant=st.sampled_from([name for name, _, _ in VARIANTS]))
def test_no_published_frame_is_ever_a_camera_frame(
    camera_clip: Path,
    camera_frames: CameraFrames,
    pipelines: dict[str, Pipeline],
    sequence: list[tuple[str, int]],
    variant: str,
) -> None:
    control = control_path(camera_clip)
    set_fault(control, "ok")
    clock = SkewClock()
    capture = Capture(
        CaptureConfig(source=f"fault:{camera_clip}", retry_max_s=0.05), clock=clock
    ).start()
    stats = RollingStats()
    loop = FrameLoop(capture, pipelines[variant], SinkSet(stats), 30, stats, clock=clock)
    published = 0
    try:
        for action, frames in sequence:
            seen = capture.latest()
            if action == "jump":  # no new frame for longer than the stale limit
                clock.offset += 2 * Pipeline.STALE_S
            else:
                set_fault(control, "ok" if action == "face" else action)
            if action in ("face", "noface"):
                newer = seen.index if seen is not None else -1
                assert capture.wait_for_frame(newer + 1, timeout_s=5) is not None
            elif action == "error":
                assert wait_until(lambda: capture.state == "lost"), capture.state
            elif action == "vanish":
                assert wait_until(lambda: capture.state == "missing"), capture.state
            for _ in range(frames):
                frame = loop.step()
                if frame is None:  # the generator failed before any good frame: nothing out
                    continue
                published += 1
                camera_frames.assert_not_a_camera_frame(frame.image)
            event(f"{action}: face {pipelines[variant].motion.state}")
    finally:
        set_fault(control, "ok")  # a stalled read returns, so the reader thread can end
        capture.close(timeout_s=2)
    assert published == sum(n for _, n in sequence)


def test_the_leak_detector_does_see_a_camera_frame(
    camera_clip: Path, camera_frames: CameraFrames, pipelines: dict[str, Pipeline]
) -> None:
    """The property can fail: the camera frame itself, or one blended into the avatar, is
    caught; an avatar frame is far from every camera frame."""
    camera = read_video(camera_clip)[0][7]
    rendered = pipelines["default"].process(None, time.monotonic())
    with pytest.raises(AssertionError, match="close to the camera"):
        camera_frames.assert_not_a_camera_frame(camera)
    with pytest.raises(AssertionError, match="close to the camera"):
        camera_frames.assert_not_a_camera_frame(pixelate(camera))
    with pytest.raises(AssertionError, match="close to the camera"):
        camera_frames.assert_not_a_camera_frame(cv2.addWeighted(camera, 0.6, rendered, 0.4, 0))
    mad, corr = camera_frames.closeness(rendered)
    assert mad > 2 * LEAK_MAD and corr < LEAK_CORR / 2, (mad, corr)
