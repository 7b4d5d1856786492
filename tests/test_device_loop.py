"""The frame loop on the GPU engines (daemon.device_loop through cuda_stream.StreamPipeline,
upload ahead), on torch's CPU device: frames published two steps late, in order, each from
the driver frame it names and never that frame itself; latest frame wins; repeated, stale
and missing frames; face lost → idle; a failed frame; the frames in flight at stop; a
reload that changes the engines. Stand-ins at the stage edges: a tracker that "finds" the
avatar's own face in any frame whose pixels hold a face code (and records what it was
handed), and a generator that paints 255 - that code, so each output names its frame."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch

from daemon.config import Config, MotionConfig
from daemon.frames import CapturedFrame, OutputFrame
from daemon.pipeline import FrameLoop, FrameRelay, Pipeline, build_pipeline
from daemon.sinks import SinkSet
from daemon.stats import RollingStats
from engines.generator.avatar_prep import prepare_avatar
from engines.generator.interface import DriverView
from engines.landmarks.interface import Landmarks
from engines.motion.estimator import Motion, MotionEstimator

torch.set_num_threads(1)

WIDTH, HEIGHT = 64, 48
CAMERA = (36, 60, 3)
FPS = 30.0
NO_FACE = 1  # a camera frame of this code holds no face
IDLE = 7  # what the generator paints without the driver's face


def code(index: int) -> int:
    return 10 + index % 200


def camera_frame(index: int, face: bool = True) -> np.ndarray:
    return np.full(CAMERA, code(index) if face else NO_FACE, np.uint8)


class HostTracker:
    """The tracker's interface without a device (the CPU engines' kind)."""

    def __init__(self, points: np.ndarray) -> None:
        self.points = points
        self.calls: list[tuple[int, str, int]] = []  # (driver index, how, code seen)

    def detect(self, image: np.ndarray, t_capture: float, index: int) -> Landmarks | None:
        return self._seen(int(image[0, 0, 0]), "host", t_capture, index)

    def _seen(self, value: int, how: str, t_capture: float, index: int) -> Landmarks | None:
        self.calls.append((index, how, value))
        if value == NO_FACE:
            return None
        return Landmarks(self.points, CAMERA[1], CAMERA[0], t_capture, index)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


class CodeTracker(HostTracker):
    """The tracker taking frames already on its device, torch's CPU device here, like the
    GPU engines' own."""

    device = torch.device("cpu")

    def detect_uploaded(
        self, frame: torch.Tensor, t_capture: float, index: int
    ) -> Landmarks | None:
        return self._seen(int(frame[0, 0, 0]), "uploaded", t_capture, index)


class CodeGenerator:
    """Paints 255 - the driver frame's code (IDLE without the driver's face) on the device;
    fails for the driver indices in `fail`."""

    uses_driver_pixels = True  # so the pipeline lends it the driver frame with its face
    device = torch.device("cpu")

    def __init__(self, fail: tuple[int, ...] = ()) -> None:
        self.fail = fail
        self.motions: list[Motion] = []

    def render_tensor(self, motion: Motion, driver: DriverView | None = None) -> torch.Tensor:
        self.motions.append(motion)
        value = IDLE if driver is None else 255 - int(driver.image[0, 0, 0])
        if driver is not None and 255 - value - 10 in self.fail:
            raise RuntimeError(f"generator failed on frame {255 - value - 10}")
        return torch.full((HEIGHT, WIDTH, 3), value, dtype=torch.uint8)

    def render(self, motion: Motion, driver: DriverView | None = None) -> np.ndarray:
        return self.render_tensor(motion, driver).numpy()


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class ScriptedCapture:
    """The camera: each `latest` gives the next scripted frame (None: no camera)."""

    def __init__(self, script: list[CapturedFrame | None]) -> None:
        self.script = list(script)
        self.taken = 0

    def latest(self) -> CapturedFrame | None:
        frame = self.script[min(self.taken, len(self.script) - 1)]
        self.taken += 1
        return frame


@pytest.fixture(scope="module")
def face_points() -> np.ndarray:
    avatar = prepare_avatar("default")
    height, width = avatar.image.shape[:2]
    return avatar.points * np.array([CAMERA[1] / width, CAMERA[0] / height, CAMERA[1] / width])


def make_loop(
    face_points: np.ndarray, clock: Clock, script, generator: CodeGenerator | None = None
) -> tuple[FrameLoop, CodeTracker, CodeGenerator]:
    stats = RollingStats()
    tracker, generator = CodeTracker(face_points), generator or CodeGenerator()
    pipeline = Pipeline(
        generator,
        stats,
        WIDTH,
        HEIGHT,
        detector=tracker,
        estimator=MotionEstimator(MotionConfig()),
    )
    loop = FrameLoop(ScriptedCapture(script), pipeline, SinkSet(stats), FPS, stats, clock)
    return loop, tracker, generator


def steps(loop: FrameLoop, clock: Clock, count: int) -> list[OutputFrame | None]:
    published = []
    for _ in range(count):
        published.append(loop.step())
        clock.t += 1 / FPS
    return published


def fresh_frames(clock: Clock, count: int, start: int = 0, stride: int = 1) -> list:
    """Frames taken as the loop takes them: frame k at step k's time."""
    return [
        CapturedFrame(camera_frame(start + k * stride), clock.t + k / FPS, start + k * stride)
        for k in range(count)
    ]


def assert_made_from(frame: OutputFrame, driver: CapturedFrame) -> None:
    assert frame.t_capture == driver.t_capture
    assert (frame.image == 255 - code(driver.index)).all(), "not made from the frame it names"
    assert not (frame.image == driver.image[0, 0, 0]).all(), "a camera frame was published"


def test_each_frame_is_published_two_steps_late_in_order_from_its_own_driver_frame(
    face_points,
) -> None:
    clock = Clock()
    drivers = fresh_frames(clock, 8)
    loop, tracker, _ = make_loop(face_points, clock, drivers)
    published = steps(loop, clock, 8)
    assert published[:2] == [None, None]  # the stream fills: upload, then work
    flushed = loop.finish()
    frames = [f for f in published if f is not None] + flushed
    assert len(flushed) == 2 and loop.finish() == []

    assert [f.index for f in frames] == list(range(8))  # none twice, none skipped
    for frame, driver in zip(frames, drivers, strict=True):
        assert_made_from(frame, driver)
    # each frame was handed to the tracker once, already uploaded, as its own driver frame
    assert tracker.calls == [(d.index, "uploaded", code(d.index)) for d in drivers]
    assert loop.pipeline.motion.state == "tracked"
    summary = loop._stats.summary()
    assert {"upload", "readback", "landmarks", "generator"} <= set(summary)


def test_the_latest_frame_wins_and_the_skipped_ones_are_never_uploaded(face_points) -> None:
    clock = Clock()
    drivers = fresh_frames(clock, 6, start=3, stride=3)  # the camera moved on 3 per step
    loop, tracker, _ = make_loop(face_points, clock, drivers)
    frames = [f for f in steps(loop, clock, 6) if f is not None] + loop.finish()
    for frame, driver in zip(frames, drivers, strict=True):
        assert_made_from(frame, driver)
    assert [index for index, _, _ in tracker.calls] == [3, 6, 9, 12, 15, 18]


def test_a_repeated_frame_is_not_uploaded_again_and_still_publishes(face_points) -> None:
    clock = Clock()
    first, second = fresh_frames(clock, 2)
    second = CapturedFrame(second.image, clock.t + 3 / FPS, 1)
    loop, tracker, _ = make_loop(face_points, clock, [first, first, first, second])
    frames = [f for f in steps(loop, clock, 5) if f is not None] + loop.finish()
    assert [f.t_capture for f in frames] == [first.t_capture] * 3 + [second.t_capture] * 2
    for frame in frames[:3]:
        assert_made_from(frame, first)
    assert tracker.calls == [(0, "uploaded", code(0)), (1, "uploaded", code(1))]
    assert [f.index for f in frames] == list(range(5))


def test_no_camera_or_a_stale_frame_idles_and_is_never_uploaded(face_points) -> None:
    clock = Clock()
    stale = CapturedFrame(camera_frame(0), clock.t - 2 * Pipeline.STALE_S, 0)
    loop, tracker, generator = make_loop(face_points, clock, [None, None, stale, stale, None])
    frames = [f for f in steps(loop, clock, 5) if f is not None] + loop.finish()
    assert len(frames) == 5
    assert [f.t_capture for f in frames] == [None, None, stale.t_capture, stale.t_capture, None]
    assert all((f.image == IDLE).all() for f in frames)
    assert tracker.calls == []
    assert {m.state for m in generator.motions} == {"idle"}


def test_a_lost_face_holds_then_idles(face_points) -> None:
    clock = Clock()
    count = 4 + int(FPS * MotionConfig().lost_grace_s) + 3
    drivers = [
        CapturedFrame(camera_frame(k, face=k < 4), clock.t + k / FPS, k) for k in range(count)
    ]
    loop, tracker, generator = make_loop(face_points, clock, drivers)
    frames = [f for f in steps(loop, clock, count) if f is not None] + loop.finish()
    states = [m.state for m in generator.motions]
    assert states[:4] == ["tracked"] * 4 and "lost" in states and states[-1] == "idle"
    assert [f.t_capture for f in frames] == [d.t_capture for d in drivers]
    assert all((f.image == IDLE).all() for f in frames[4:])
    assert [value for _, _, value in tracker.calls[4:]] == [NO_FACE] * (count - 4)


def test_a_failed_frame_repeats_the_last_good_one_as_made_from_its_own_driver(
    face_points, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="daemon.pipeline")
    clock = Clock()
    drivers = fresh_frames(clock, 6)
    loop, _, _ = make_loop(face_points, clock, drivers, CodeGenerator(fail=(3,)))
    frames = [f for f in steps(loop, clock, 6) if f is not None] + loop.finish()
    assert [f.index for f in frames] == list(range(6))
    made_from = [0, 1, 2, 2, 4, 5]  # frame 3's place: frame 2 again, named as frame 2
    for frame, index in zip(frames, made_from, strict=True):
        assert_made_from(frame, drivers[index])
    assert sum("repeating the last frame" in r.getMessage() for r in caplog.records) == 1


def test_stopping_the_loop_publishes_the_frames_in_flight(face_points) -> None:
    """The daemon's way: `run` until the stop event; the last frames taken are published."""
    clock = Clock()
    stop = threading.Event()
    drivers = fresh_frames(clock, 5)

    class StoppingCapture(ScriptedCapture):
        def latest(self) -> CapturedFrame | None:
            frame = super().latest()
            clock.t += 1 / FPS
            if self.taken == len(self.script):
                stop.set()
            return frame

    loop, _, _ = make_loop(face_points, clock, [])
    loop.capture = StoppingCapture(drivers)  # type: ignore[assignment]
    got: list[OutputFrame] = []
    loop.relay.listen(lambda: got.append(loop.relay.latest()))
    loop.run(stop)
    assert [f.index for f in got] == list(range(5))
    for frame, driver in zip(got, drivers, strict=True):
        assert frame.t_capture == driver.t_capture
        assert (frame.image == 255 - code(driver.index)).all()


def test_a_reload_to_the_cpu_engines_leaves_the_stream_and_publishes_at_once(
    face_points,
) -> None:
    clock = Clock()
    drivers = fresh_frames(clock, 6)
    loop, _, _ = make_loop(face_points, clock, drivers)
    before = [f for f in steps(loop, clock, 3) if f is not None]
    assert [f.t_capture for f in before] == [drivers[0].t_capture]
    host = HostTracker(face_points)
    loop.pipeline.set_detector(host)  # what Daemon.apply does when the engines change
    assert loop.pipeline.device is None
    after = steps(loop, clock, 3)  # synchronous again: each step's own driver frame
    for frame, driver in zip(after, drivers[3:], strict=True):
        assert frame is not None
        assert_made_from(frame, driver)
    # frame 2 (uploaded, not yet worked on) is still worked on as the stream ends, then
    # dropped with frame 1: both older than frame 3, published at once
    assert [index for index, how, _ in host.calls] == [2, 3, 4, 5]
    assert {how for _, how, _ in host.calls} == {"host"}
    assert [f.index for f in before + after] == list(range(4))
    assert loop.finish() == []


def test_a_remote_peers_frames_drop_what_was_in_flight(face_points) -> None:
    clock = Clock()
    gap = FrameLoop.EXTERNAL_STALE_S + 0.1  # the peer's frame goes stale
    drivers = fresh_frames(clock, 3)
    later = CapturedFrame(camera_frame(3), clock.t + 4 / FPS + gap, 3)
    loop, _, _ = make_loop(face_points, clock, [*drivers, later])
    loop.external = FrameRelay(clock)
    local = steps(loop, clock, 3)
    peer = np.full((HEIGHT, WIDTH, 3), 99, np.uint8)
    loop.external.post(OutputFrame(peer, clock.t, 0))
    remote = steps(loop, clock, 1)[0]
    clock.t += gap
    resumed = steps(loop, clock, 3)
    assert remote is not None and (remote.image == 99).all()
    assert local[:2] == [None, None] and resumed[:2] == [None, None]  # the stream refills
    assert local[2] is not None and resumed[2] is not None
    assert_made_from(local[2], drivers[0])
    assert_made_from(resumed[2], later)
    assert [f.index for f in (local[2], remote, resumed[2])] == [0, 1, 2]


def test_the_cpu_engines_keep_the_synchronous_loop() -> None:
    """MediaPipe + OpenCV (engines: cpu): no device, so each step publishes the frame made
    from its own driver frame, as before."""
    stats = RollingStats()
    config = Config.model_validate({"output": {"width": WIDTH, "height": HEIGHT}})
    pipeline = build_pipeline(config, stats)
    clock = Clock()
    driver = CapturedFrame(camera_frame(0), clock.t, 0)
    loop = FrameLoop(ScriptedCapture([driver]), pipeline, SinkSet(stats), FPS, stats, clock)
    try:
        assert pipeline.device is None
        frame = loop.step()
    finally:
        pipeline.close()
    assert frame is not None and frame.t_capture == driver.t_capture and frame.index == 0
    assert loop.finish() == []
    assert "upload" not in stats.summary()
    assert Pipeline(CodeGenerator(), stats, WIDTH, HEIGHT).device is None  # no tracker
