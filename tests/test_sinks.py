"""Sinks: pixel formats, the MP4 file sink, isolation of a failing sink, SinkSet reloads, the
virtual camera without v4l2loopback, and the frame loop's fallbacks. No device needed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import mean_abs_diff, read_video, wait_until

from daemon.capture import Capture
from daemon.config import (
    CaptureConfig,
    FileSinkConfig,
    NullSinkConfig,
    OutputConfig,
    VirtualCamSinkConfig,
)
from daemon.errors import SinkError
from daemon.frames import OutputFrame
from daemon.pipeline import FrameLoop, Pipeline
from daemon.sinks import (
    FileSink,
    SinkSet,
    SinkWorker,
    VirtualCamSink,
    bgr_to_i420,
    bgr_to_yuyv,
)
from daemon.stats import RollingStats
from engines.motion.estimator import Motion

WIDTH, HEIGHT = 320, 240
OUTPUT = OutputConfig(width=WIDTH, height=HEIGHT, fps=25)


@pytest.fixture
def frame(face_image: np.ndarray) -> np.ndarray:
    """A real face at the (even) output size."""
    return cv2.resize(face_image, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)


def distinct_frames(frame: np.ndarray, count: int) -> list[np.ndarray]:
    """The face rolled sideways by 16 px per frame, so every frame is recognisable."""
    return [np.ascontiguousarray(np.roll(frame, 16 * i, axis=1)) for i in range(count)]


def best_match(image: np.ndarray, candidates: list[np.ndarray]) -> int:
    return int(np.argmin([mean_abs_diff(image, c) for c in candidates]))


def bt601_limited(bgr: tuple[int, int, int]) -> tuple[int, int, int]:
    """Y, U (Cb), V (Cr) of one colour in BT.601 video range — what YUYV/I420 readers assume."""
    b, g, r = bgr
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return round(y), round(u), round(v)


# ---------------------------------------------------------------- pixel formats


def test_i420_has_the_right_size_and_round_trips(frame: np.ndarray) -> None:
    i420 = bgr_to_i420(frame)
    assert i420.dtype == np.uint8
    assert i420.shape == (WIDTH * HEIGHT * 3 // 2,)
    back = cv2.cvtColor(i420.reshape(HEIGHT * 3 // 2, WIDTH), cv2.COLOR_YUV2BGR_I420)
    assert mean_abs_diff(back, frame) < 3.0


def test_yuyv_has_the_right_size_and_round_trips(frame: np.ndarray) -> None:
    yuyv = bgr_to_yuyv(frame)
    assert yuyv.dtype == np.uint8
    assert yuyv.shape == (WIDTH * HEIGHT * 2,)
    back = cv2.cvtColor(yuyv.reshape(HEIGHT, WIDTH, 2), cv2.COLOR_YUV2BGR_YUY2)
    assert mean_abs_diff(back, frame) < 3.0


def test_yuyv_and_i420_agree_on_colour(frame: np.ndarray) -> None:
    """Switching pixel_format must not change how the published video looks."""
    via_i420 = cv2.cvtColor(bgr_to_i420(frame).reshape(-1, WIDTH), cv2.COLOR_YUV2BGR_I420)
    via_yuyv = cv2.cvtColor(bgr_to_yuyv(frame).reshape(HEIGHT, WIDTH, 2), cv2.COLOR_YUV2BGR_YUY2)
    assert mean_abs_diff(via_i420, via_yuyv) < 3.0


def test_yuyv_byte_layout_of_a_pure_colour() -> None:
    colour = (30, 200, 90)  # BGR: Y, U and V all differ, so misplaced bytes show
    y, u, v = bt601_limited(colour)
    packed = bgr_to_yuyv(np.full((4, 6, 3), colour, np.uint8)).reshape(4, 3, 4)
    expected = np.array([y, u, y, v], np.int16)  # Y0 U Y1 V
    assert np.abs(packed.astype(np.int16) - expected).max() <= 1, (packed[0, 0], expected)


def test_yuyv_pairs_two_pixels_y0_then_y1() -> None:
    columns = np.zeros((2, 4, 3), np.uint8)
    columns[:, 1::2] = 255  # black, white, black, white
    packed = bgr_to_yuyv(columns).reshape(2, 2, 4)
    # Y0 = black, Y1 = white; grey has no chroma, so U = V = 128 (the pair's average)
    expected = np.array([16, 128, 235, 128], np.int16)
    assert np.abs(packed.astype(np.int16) - expected).max() <= 1, packed[0, 0]


# ---------------------------------------------------------------- the file sink


def test_file_sink_writes_exactly_the_frames_written(tmp_path: Path, frame: np.ndarray) -> None:
    path = tmp_path / "out" / "avatar.mp4"  # the folder is created
    sink = FileSink(FileSinkConfig(type="file", path=str(path)), OUTPUT)
    frames = distinct_frames(frame, 7)
    sink.open()
    try:
        for image in frames:
            sink.write(image)
    finally:
        sink.close()
    sink.close()  # safe twice
    assert sink.frames_written == 7

    read, fps = read_video(path)
    assert fps == pytest.approx(OUTPUT.fps)
    assert len(read) == 7
    for i, image in enumerate(read):
        assert image.shape == (HEIGHT, WIDTH, 3)
        assert best_match(image, frames) == i


def test_file_sink_rejects_a_wrong_frame_shape(tmp_path: Path, frame: np.ndarray) -> None:
    sink = FileSink(FileSinkConfig(type="file", path=str(tmp_path / "a.mp4")), OUTPUT)
    with pytest.raises(SinkError, match="not open"):
        sink.write(frame)
    sink.open()
    try:
        with pytest.raises(SinkError, match="unexpected frame shape") as err:
            sink.write(cv2.resize(frame, (WIDTH // 2, HEIGHT // 2)))
        assert str((HEIGHT, WIDTH, 3)) in str(err.value)
        with pytest.raises(SinkError, match="unexpected frame shape"):
            sink.write(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    finally:
        sink.close()
    assert sink.frames_written == 0


def test_file_sink_under_a_regular_file_fails_clearly_on_open(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file")
    sink = FileSink(FileSinkConfig(type="file", path=str(blocker / "out.mp4")), OUTPUT)
    with pytest.raises(SinkError, match="cannot create the folder") as err:
        sink.open()
    assert str(blocker) in str(err.value)
    sink.close()


def test_file_sink_whose_path_is_a_folder_fails_clearly_on_open(tmp_path: Path) -> None:
    folder = tmp_path / "taken.mp4"
    folder.mkdir()
    sink = FileSink(FileSinkConfig(type="file", path=str(folder)), OUTPUT)
    with pytest.raises(SinkError, match="cannot write") as err:
        sink.open()
    assert str(folder) in str(err.value)
    assert "writable" in str(err.value)


# ---------------------------------------------------------------- isolation


class FlakySink:
    """A Sink whose write number `fail_at` raises once; the reopen after it waits for
    `allow_reopen`, so the test can look at the failed state."""

    def __init__(self, fail_at: int):
        self.name = "flaky"
        self.fail_at = fail_at
        self.opens = 0
        self.closes = 0
        self.attempts = 0
        self.written: list[np.ndarray] = []
        self.allow_reopen = threading.Event()

    def open(self) -> None:
        if self.opens >= 1:
            self.allow_reopen.wait(5)
        self.opens += 1

    def write(self, frame: np.ndarray) -> None:
        self.attempts += 1
        if self.attempts == self.fail_at:
            raise OSError("device went away")
        self.written.append(frame)

    def close(self) -> None:
        self.closes += 1


@pytest.fixture
def stats() -> RollingStats:
    return RollingStats()


@pytest.fixture
def workers() -> Iterator[list[SinkWorker]]:
    made: list[SinkWorker] = []
    yield made
    for worker in made:
        worker.close()


def test_a_failing_sink_reopens_and_does_not_hold_up_the_others(
    tmp_path: Path,
    frame: np.ndarray,
    stats: RollingStats,
    workers: list[SinkWorker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.sinks")
    path = tmp_path / "isolated.mp4"
    file_config = FileSinkConfig(type="file", path=str(path))
    file_worker = SinkWorker(FileSink(file_config, OUTPUT), file_config, stats)
    flaky = FlakySink(fail_at=3)
    flaky_worker = SinkWorker(flaky, NullSinkConfig(type="null"), stats)
    workers += [file_worker, flaky_worker]
    frames = distinct_frames(frame, 9)

    def post(i: int) -> None:
        for worker in workers:  # the fan-out a SinkSet does
            worker.post(OutputFrame(frames[i], None, i))
        assert wait_until(lambda: file_worker.status().frames_written == i + 1), (
            file_worker.status()
        )

    for i in range(2):
        post(i)
        assert wait_until(lambda: flaky.attempts == i + 1)  # noqa: B023 (used right away)
    post(2)  # the flaky sink's 3rd write raises
    assert wait_until(lambda: flaky_worker.status().state == "failed"), flaky_worker.status()
    detail = flaky_worker.status().detail
    assert "write failed" in detail and "device went away" in detail and "reopening" in detail

    # while the flaky sink is down (its reopen is held), the file sink gets every frame
    for i in range(3, 6):
        post(i)
    assert flaky_worker.status().state == "failed"
    flaky.allow_reopen.set()
    assert wait_until(lambda: flaky_worker.status().state == "ok"), flaky_worker.status()
    for i in range(6, 9):
        post(i)
        assert wait_until(lambda: flaky.written and flaky.written[-1] is frames[i])  # noqa: B023

    assert flaky.opens == 2 and flaky.closes >= 1
    assert flaky_worker.status().frames_written == len(flaky.written)
    assert [best_match(f, frames) for f in flaky.written[-3:]] == [6, 7, 8]
    errors = [r for r in caplog.records if r.name == "daemon.sinks" and r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "flaky" in errors[0].getMessage()

    file_worker.close()
    assert file_worker.status().state == "closed"
    read, _ = read_video(path)
    assert len(read) == len(frames)
    assert [best_match(image, frames) for image in read] == list(range(len(frames)))


@pytest.mark.parametrize("device", ["auto", "/dev/video99"])
def test_virtualcam_without_v4l2loopback_fails_with_the_fix_and_never_raises(
    device: str,
    tmp_path: Path,
    frame: np.ndarray,
    stats: RollingStats,
    workers: list[SinkWorker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.sinks")
    sysfs = tmp_path / "sys"  # a machine without video4linux devices or the module
    sysfs.mkdir()
    config = VirtualCamSinkConfig(type="virtualcam", device=device)
    worker = SinkWorker(VirtualCamSink(config, OUTPUT, sysfs), config, stats, retry_max_s=0.1)
    workers.append(worker)
    for i in range(3):
        worker.post(OutputFrame(frame, None, i))  # never raises into the frame loop
    assert wait_until(lambda: worker.status().state == "failed"), worker.status()
    status = worker.status()
    assert "modprobe v4l2loopback" in status.detail
    assert "retrying" in status.detail
    assert status.frames_written == 0
    if device == "auto":
        assert "not loaded" in status.detail
    else:
        assert "/dev/video99 does not exist" in status.detail

    worker.close()
    assert worker.status().state == "closed"
    errors = [r for r in caplog.records if r.name == "daemon.sinks" and r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]


def test_virtualcam_failure_is_logged_once_per_change_while_retrying(
    tmp_path: Path, stats: RollingStats, workers: list[SinkWorker], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.sinks")
    sysfs = tmp_path / "sys"
    sysfs.mkdir()
    config = VirtualCamSinkConfig(type="virtualcam")
    worker = SinkWorker(VirtualCamSink(config, OUTPUT, sysfs), config, stats, retry_max_s=0.1)
    workers.append(worker)
    assert wait_until(lambda: "not loaded" in worker.status().detail), worker.status()
    threading.Event().wait(0.8)  # observation window: several retries at ≤0.5 s, then ≤0.1 s

    # the module appears (without our device): the retry notices and says what is wrong now
    (sysfs / "module" / "v4l2loopback").mkdir(parents=True)
    assert wait_until(lambda: "no v4l2loopback device is labelled" in worker.status().detail), (
        worker.status()
    )
    assert worker.status().state == "failed"
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "daemon.sinks"]
    assert [level for level, _ in messages] == [logging.ERROR, logging.ERROR], messages
    assert "not loaded" in messages[0][1]
    assert "labelled 'Talking Head Cam'" in messages[1][1]


# ---------------------------------------------------------------- SinkSet


def sink_workers(sinks: SinkSet) -> tuple[SinkWorker, ...]:
    """The set's workers (their identity is what is under test)."""
    return sinks.workers


def test_sink_set_configure_keeps_unchanged_replaces_changed_closes_removed(
    tmp_path: Path, frame: np.ndarray, stats: RollingStats
) -> None:
    sinks = SinkSet(stats, sysfs_root=tmp_path)
    null = NullSinkConfig(type="null")
    file_a = FileSinkConfig(type="file", path=str(tmp_path / "a.mp4"))
    file_b = FileSinkConfig(type="file", path=str(tmp_path / "b.mp4"))
    try:
        assert sinks.configure([null, file_a], OUTPUT) == ["null", f"file({file_a.path})"]
        null_worker, a_worker = sink_workers(sinks)
        assert wait_until(lambda: [s.state for s in sinks.statuses()] == ["ok", "ok"])
        sinks.post(OutputFrame(frame, None, 0))
        assert wait_until(lambda: [s.frames_written for s in sinks.statuses()] == [1, 1])

        # an equal (not identical) config is unchanged; the changed file sink is replaced
        started = sinks.configure([NullSinkConfig(type="null"), file_b], OUTPUT)
        assert started == [f"file({file_b.path})"]
        kept, b_worker = sink_workers(sinks)
        assert kept is null_worker
        assert b_worker is not a_worker and b_worker.config == file_b
        assert a_worker.status().state == "closed"
        assert null_worker.status().frames_written == 1  # not restarted
        assert len(read_video(Path(file_a.path))[0]) == 1  # closed means finalised

        # removed → closed
        assert sinks.configure([null], OUTPUT) == []
        assert sink_workers(sinks) == (null_worker,)
        assert b_worker.status().state == "closed"

        # a new output format restarts every sink
        assert sinks.configure([null], OUTPUT.model_copy(update={"fps": 30})) == ["null"]
        (replaced,) = sink_workers(sinks)
        assert replaced is not null_worker
        assert null_worker.status().state == "closed"
        last = sink_workers(sinks)
    finally:
        sinks.close()
    assert sinks.statuses() == []
    assert all(w.status().state == "closed" for w in last)


def test_sink_set_close_closes_every_worker(tmp_path: Path, stats: RollingStats) -> None:
    sinks = SinkSet(stats, sysfs_root=tmp_path)
    sinks.configure(
        [
            NullSinkConfig(type="null"),
            FileSinkConfig(type="file", path=str(tmp_path / "c.mp4")),
            VirtualCamSinkConfig(type="virtualcam"),  # fails: no v4l2loopback in tmp_path
        ],
        OUTPUT,
    )
    workers = sink_workers(sinks)
    assert wait_until(lambda: workers[2].status().state == "failed")
    start = time.monotonic()
    sinks.close()
    assert time.monotonic() - start < 1.5
    assert [w.status().state for w in workers] == ["closed", "closed", "closed"]


# ---------------------------------------------------------------- the frame loop's fallbacks


class FailingGenerator:
    """Renders a distinct real frame per call; raises from call number `fail_from` on."""

    def __init__(self, frames: list[np.ndarray], fail_from: int):
        self.frames, self.fail_from = frames, fail_from
        self.calls = 0
        self.motions: list[Motion] = []

    uses_driver_pixels = False

    def render(self, motion: Motion, driver: object = None) -> np.ndarray:
        self.calls += 1
        self.motions.append(motion)
        if self.calls >= self.fail_from:
            raise RuntimeError("CUDA out of memory")
        return self.frames[self.calls - 1]


@pytest.fixture
def idle_capture(tmp_path: Path) -> Iterator[Capture]:
    """A Capture on a missing source: it never has a frame."""
    capture = Capture(CaptureConfig(source=str(tmp_path / "absent.mp4"))).start()
    assert wait_until(lambda: capture.state == "missing")
    yield capture
    capture.close()


def test_frame_loop_repeats_the_last_good_frame_when_the_generator_fails(
    frame: np.ndarray,
    stats: RollingStats,
    idle_capture: Capture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.pipeline")
    generator = FailingGenerator(distinct_frames(frame, 3), fail_from=2)
    sinks = SinkSet(stats)
    sinks.configure([NullSinkConfig(type="null")], OUTPUT)
    loop = FrameLoop(idle_capture, Pipeline(generator, stats, WIDTH, HEIGHT), sinks, 25, stats)
    try:
        first = loop.step()
        assert first is not None
        assert first.t_capture is None and first.index == 0  # idle: no driver frame
        good = first.image.copy()
        assert np.array_equal(good, generator.frames[0])

        for n in (1, 2, 3):
            repeated = loop.step()  # the generator raises every time now
            assert repeated is not None
            assert repeated.index == n
            assert np.array_equal(repeated.image, good)
        assert generator.calls == 4
        assert [m.state for m in generator.motions] == ["idle"] * 4
        assert loop.frames_published == 4
        assert loop.first_frame.is_set() and loop.heartbeat is not None
        assert wait_until(lambda: sinks.statuses()[0].frames_written >= 1)
    finally:
        sinks.close()
    errors = [
        r for r in caplog.records if r.name == "daemon.pipeline" and r.levelno >= logging.ERROR
    ]
    assert len(errors) == 1, "a failing stage is logged once per interval, not per frame"
    assert "repeating the last frame" in errors[0].getMessage()


def test_frame_loop_without_a_driver_frame_still_publishes(
    frame: np.ndarray, stats: RollingStats, idle_capture: Capture
) -> None:
    generator = FailingGenerator(distinct_frames(frame, 3), fail_from=99)
    loop = FrameLoop(
        idle_capture, Pipeline(generator, stats, WIDTH, HEIGHT), SinkSet(stats), 25, stats
    )
    frames = [loop.step() for _ in range(3)]
    assert all(f is not None for f in frames)
    assert [f.index for f in frames if f is not None] == [0, 1, 2]
    assert [m.state for m in generator.motions] == ["idle"] * 3
    for got, expected in zip(frames, generator.frames, strict=True):
        assert got is not None and np.array_equal(got.image, expected)


def test_frame_loop_with_a_generator_failing_from_the_start_publishes_nothing(
    frame: np.ndarray, stats: RollingStats, idle_capture: Capture
) -> None:
    generator = FailingGenerator([frame], fail_from=1)
    loop = FrameLoop(
        idle_capture, Pipeline(generator, stats, WIDTH, HEIGHT), SinkSet(stats), 25, stats
    )
    assert loop.step() is None  # nothing good to repeat yet, and no exception
    assert loop.frames_published == 0
    assert not loop.first_frame.is_set()


def test_frame_loop_treats_a_wrong_size_from_the_generator_as_a_failure(
    frame: np.ndarray, stats: RollingStats, idle_capture: Capture
) -> None:
    wrong = cv2.resize(frame, (WIDTH // 2, HEIGHT // 2))
    generator = FailingGenerator([frame, wrong], fail_from=99)
    loop = FrameLoop(
        idle_capture, Pipeline(generator, stats, WIDTH, HEIGHT), SinkSet(stats), 25, stats
    )
    assert loop.step() is not None
    second = loop.step()
    assert second is not None and second.image.shape == (HEIGHT, WIDTH, 3)
    assert np.array_equal(second.image, frame)


def test_sink_set_matches_duplicate_configs_one_to_one():
    sinks = SinkSet(RollingStats())
    output = OutputConfig(width=32, height=24, fps=10)
    null = NullSinkConfig(type="null")
    try:
        sinks.configure([null, null], output)
        first, second = sink_workers(sinks)
        sinks.configure([null], output)
        assert sink_workers(sinks) == (first,)
        assert second.status().state == "closed"
    finally:
        sinks.close()


# ---------------------------------------------------------------- recordings


def record(path: Path, frames: list[np.ndarray], codec: str = "auto") -> None:
    sink = FileSink(FileSinkConfig(type="file", path=str(path), codec=codec), OUTPUT)
    sink.open()
    for frame in frames:
        sink.write(frame)
    sink.close()


def noisy_frames(count: int) -> list[np.ndarray]:
    """Frames no lossy codec keeps bit for bit (fine noise over a gradient)."""
    rng = np.random.default_rng(7)
    ramp = np.linspace(0, 200, WIDTH, dtype=np.float32)[None, :, None]
    return [
        np.clip(ramp + rng.normal(0, 20, (HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)
        for _ in range(count)
    ]


def test_mkv_recording_is_lossless_ffv1(tmp_path: Path) -> None:
    import av

    frames = noisy_frames(6)
    path = tmp_path / "out.mkv"
    record(path, frames)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "ffv1"
    read, fps = read_video(path)
    assert fps == 25 and len(read) == len(frames)
    for written, back in zip(frames, read, strict=True):
        assert np.array_equal(written, back)  # every pixel as published


def test_mp4_recording_is_h264_and_close_to_the_frames(tmp_path: Path) -> None:
    import av

    frames = [cv2.GaussianBlur(f, (0, 0), 3) for f in noisy_frames(6)]  # what a camera shows
    path = tmp_path / "out.mp4"
    record(path, frames)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"  # not MPEG-4 part 2
    read, fps = read_video(path)
    assert fps == 25 and len(read) == len(frames)
    assert max(mean_abs_diff(a, b) for a, b in zip(frames, read, strict=True)) < 3.0


def test_codec_can_be_forced_whatever_the_extension(tmp_path: Path) -> None:
    import av

    path = tmp_path / "small.mkv"
    record(path, noisy_frames(2), codec="h264")
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    sink = FileSink(FileSinkConfig(type="file", path=str(tmp_path / "x.mov"), codec="ffv1"), OUTPUT)
    with pytest.raises(SinkError, match=r"cannot write .*x\.mov.*ffv1"):
        sink.open()
