"""Capture from real files made in tmp_path: video files, still images, missing and corrupt
sources. No camera exists here; a missing /dev/video99 stands for an unplugged one."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import mean_abs_diff, wait_until, write_video

from daemon.capture import Capture, SourceSpec, VideoFileReader, classify_source
from daemon.config import CaptureConfig
from daemon.errors import CaptureError

SIZE = (320, 240)  # width, height
FILE_FPS = 100.0  # the files' own rate: Capture paces to it, so a pass over 12 frames is ~0.12 s
FILE_FRAMES = 12
END_WAIT_S = 60.0  # what a wait at the end of a file would run into, were it not answered


def capture_threads(capture: Capture) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"capture:{capture.spec}"]


@pytest.fixture
def open_capture() -> Iterator[Callable[..., Capture]]:
    """Start a Capture; every one started is closed at the end of the test."""
    started: list[Capture] = []

    def start(source: int | str, **options: object) -> Capture:
        capture = Capture(CaptureConfig(source=source, **options)).start()
        started.append(capture)
        return capture

    yield start
    for capture in started:
        capture.close()


@pytest.fixture
def video(tmp_path: Path, face_image: np.ndarray) -> Path:
    return write_video(tmp_path / "driver.mp4", face_image, FILE_FRAMES, FILE_FPS, SIZE)


@pytest.fixture
def still(tmp_path: Path, other_face: np.ndarray) -> tuple[Path, np.ndarray]:
    path = tmp_path / "driver.png"
    assert cv2.imwrite(str(path), cv2.resize(other_face, SIZE))
    return path, cv2.imread(str(path))


# ---------------------------------------------------------------- classify_source


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (0, SourceSpec("camera", 0)),
        (3, SourceSpec("camera", 3)),
        ("auto", SourceSpec("camera", "auto")),
        ("/dev/video0", SourceSpec("camera", "/dev/video0")),
        ("/dev/video12", SourceSpec("camera", "/dev/video12")),
        ("face.png", SourceSpec("image", "face.png")),
        ("/home/me/Face.JPG", SourceSpec("image", "/home/me/Face.JPG")),
        ("still.jpeg", SourceSpec("image", "still.jpeg")),
        ("clip.mp4", SourceSpec("video", "clip.mp4")),
        ("/tmp/clip.mkv", SourceSpec("video", "/tmp/clip.mkv")),
        ("recording", SourceSpec("video", "recording")),
    ],
)
def test_classify_source(source: int | str, expected: SourceSpec) -> None:
    assert classify_source(source) == expected


def test_source_spec_names_cameras_readably() -> None:
    assert str(classify_source(0)) == "camera 0"
    assert str(classify_source("/dev/video2")) == "/dev/video2"
    assert str(classify_source("clip.mp4")) == "clip.mp4"


# ---------------------------------------------------------------- video files


def test_video_file_frames_are_bgr_uint8_with_increasing_index_and_time(
    video: Path, open_capture: Callable[..., Capture]
) -> None:
    before = time.monotonic()
    capture = open_capture(str(video))
    frames = []
    index = -1
    for _ in range(5):
        frame = capture.wait_for_frame(index, timeout_s=5)
        assert frame is not None, f"no frame after index {index}; {capture.state}: {capture.detail}"
        frames.append(frame)
        index = frame.index
    after = time.monotonic()

    assert capture.state == "streaming"
    for frame in frames:
        assert frame.image.shape == (SIZE[1], SIZE[0], 3)
        assert frame.image.dtype == np.uint8
        assert before <= frame.t_capture <= after  # monotonic clock, not wall time
    indices = [f.index for f in frames]
    times = [f.t_capture for f in frames]
    assert indices == sorted(set(indices)), indices
    assert all(a < b for a, b in itertools.pairwise(times)), times
    # the file's frames drift, so consecutive captured frames really are different frames
    assert mean_abs_diff(frames[0].image, frames[1].image) > 1.0


def test_video_frame_is_read_only(video: Path, open_capture: Callable[..., Capture]) -> None:
    capture = open_capture(str(video))
    frame = capture.wait_for_frame(timeout_s=5)
    assert frame is not None
    assert not frame.image.flags.writeable
    with pytest.raises(ValueError):
        frame.image[0, 0] = 0


def test_latest_returns_only_the_newest_frame(
    video: Path, open_capture: Callable[..., Capture]
) -> None:
    capture = open_capture(str(video))
    first = capture.wait_for_frame(timeout_s=5)
    assert first is not None
    # let several frames go by without reading them: they must not queue up
    later = capture.wait_for_frame(first.index + 3, timeout_s=5)
    assert later is not None
    assert later.index > first.index + 3

    newest = capture.latest()
    assert newest is not None
    assert newest.index >= later.index  # the older, unread frames are gone
    assert newest is not first
    again = capture.latest()
    assert again is not None and again.index >= newest.index


def test_video_without_loop_ends_after_its_frames(
    video: Path, open_capture: Callable[..., Capture]
) -> None:
    capture = open_capture(str(video), loop=False)
    index = -1
    while (frame := capture.wait_for_frame(index, timeout_s=5)) is not None:
        index = frame.index
    assert capture.state == "ended", capture.detail
    assert index == FILE_FRAMES - 1  # every frame of the file was published, once
    assert "end of the video file" in capture.detail

    # at the end, waiting for a newer frame returns None at once instead of timing out: the
    # timeout is long, so a loaded machine cannot blur the two
    start = time.monotonic()
    assert capture.wait_for_frame(index, timeout_s=END_WAIT_S) is None
    assert time.monotonic() - start < END_WAIT_S / 2


def test_video_with_loop_keeps_delivering_frames(
    video: Path, open_capture: Callable[..., Capture]
) -> None:
    capture = open_capture(str(video))  # loop defaults to true
    assert capture.config.loop is True
    frame = capture.wait_for_frame(2 * FILE_FRAMES + 1, timeout_s=5)
    assert frame is not None, f"{capture.state}: {capture.detail}"
    assert frame.index > 2 * FILE_FRAMES + 1
    assert capture.state == "streaming"


# ---------------------------------------------------------------- still images


def test_still_image_is_delivered_again_and_again(
    still: tuple[Path, np.ndarray], open_capture: Callable[..., Capture]
) -> None:
    path, pixels = still
    capture = open_capture(str(path))
    index = -1
    for _ in range(3):
        frame = capture.wait_for_frame(index, timeout_s=5)
        assert frame is not None, f"{capture.state}: {capture.detail}"
        assert frame.index > index
        assert np.array_equal(frame.image, pixels)
        index = frame.index
    assert capture.state == "streaming"
    assert "still image" in capture.detail


# ---------------------------------------------------------------- missing and broken sources


@pytest.mark.parametrize("kind", ["camera", "file"])
def test_missing_source_is_retried_and_close_is_prompt(
    kind: str, tmp_path: Path, open_capture: Callable[..., Capture]
) -> None:
    source = "/dev/video99" if kind == "camera" else str(tmp_path / "gone.mp4")
    capture = open_capture(source)
    assert wait_until(lambda: capture.state == "missing"), capture.state
    assert source in capture.detail
    assert "retrying" in capture.detail
    assert capture.latest() is None
    assert capture_threads(capture), "the reader thread must keep running (retrying)"

    start = time.monotonic()
    capture.close()
    assert time.monotonic() - start < 1.0
    assert capture.state == "stopped"
    assert not capture_threads(capture), "close() left the reader thread running"


def test_missing_file_logs_once_and_streams_when_it_appears(
    tmp_path: Path,
    face_image: np.ndarray,
    open_capture: Callable[..., Capture],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.capture")
    path = tmp_path / "later.mp4"
    capture = open_capture(str(path), retry_max_s=0.1)
    assert wait_until(lambda: capture.state == "missing")
    threading.Event().wait(1.0)  # observation window: several retries at ≤0.1 s apart
    assert capture.state == "missing"

    # the retries really happen: the file appears and frames arrive
    write_video(tmp_path / "staging.mp4", face_image, FILE_FRAMES, FILE_FPS, SIZE)
    os.replace(tmp_path / "staging.mp4", path)
    assert capture.wait_for_frame(timeout_s=3) is not None, capture.detail
    assert capture.state == "streaming"

    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "daemon.capture"]
    missing = [m for level, m in messages if level == logging.WARNING and "missing" in m]
    assert len(missing) == 1, messages
    assert str(path) in missing[0]
    assert [m for level, m in messages if "streaming" in m and level == logging.INFO]


class RecordingEvent(threading.Event):
    """A stop event that remembers every pause asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return super().wait(timeout)


def test_first_retry_waits_no_longer_than_retry_max_s(
    tmp_path: Path, face_image: np.ndarray
) -> None:
    """Every pause between attempts is at most retry_max_s, the first included: the pauses
    the reader asks for are checked, not how long a loaded machine took to honour them."""
    path = tmp_path / "soon.mp4"
    capture = Capture(CaptureConfig(source=str(path), retry_max_s=0.05))
    pauses = capture._stop = RecordingEvent()
    capture.start()
    try:
        assert wait_until(lambda: len(pauses.waits) >= 3), (capture.state, pauses.waits)
        assert capture.state == "missing"
        asked = list(pauses.waits)
        assert all(w is not None and 0 < w <= 0.05 for w in asked), asked
        write_video(tmp_path / "staging.mp4", face_image, FILE_FRAMES, FILE_FPS, SIZE)
        os.replace(tmp_path / "staging.mp4", path)
        assert capture.wait_for_frame(timeout_s=30) is not None, capture.detail  # retried
    finally:
        capture.close()


def test_random_bytes_named_mp4_is_reported_not_a_crash(
    tmp_path: Path, open_capture: Callable[..., Capture]
) -> None:
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 50_000, np.uint8).tobytes())
    capture = open_capture(str(path), retry_max_s=0.1)
    assert wait_until(lambda: capture.state in ("missing", "lost")), capture.state
    assert str(path) in capture.detail
    assert "cannot decode" in capture.detail or "no readable frames" in capture.detail
    assert capture.latest() is None
    assert capture_threads(capture), "the reader thread died"


def test_video_with_undecodable_frames_is_not_reopened_in_a_busy_loop(
    tmp_path: Path,
    face_image: np.ndarray,
    open_capture: Callable[..., Capture],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A file whose container opens but whose frames cannot be decoded (a camera that opens
    and then fails every read behaves the same): retried with backoff, logged once."""
    path = tmp_path / "damaged.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30, SIZE)
    assert writer.isOpened()
    for _ in range(10):
        writer.write(cv2.resize(face_image, SIZE))
    writer.release()
    data = bytearray(path.read_bytes())
    data[4096:-4096] = bytes(len(data) - 8192)  # keep the header and the index, zero the frames
    path.write_bytes(bytes(data))

    caplog.set_level(logging.INFO, logger="daemon.capture")
    capture = open_capture(str(path), retry_max_s=0.1)
    assert wait_until(lambda: capture.state in ("missing", "lost")), capture.state
    threading.Event().wait(0.6)  # observation window: a few retries at ≤0.1 s apart
    assert capture.latest() is None
    records = [r for r in caplog.records if r.name == "daemon.capture"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, f"{len(records)} log records, e.g. {warnings[:3]}"
    assert str(path) in warnings[0]


# ---------------------------------------------------------------- VideoFileReader


def test_video_file_reader_reads_every_frame_in_order(
    tmp_path: Path, face_image: np.ndarray
) -> None:
    path = write_video(tmp_path / "clip.mp4", face_image, 10, 25.0, SIZE)
    # what write_video wrote: the face shifted by (i % 10) - 5 pixels
    base = cv2.resize(face_image, SIZE)
    written = [
        cv2.warpAffine(
            base, np.float32([[1, 0, i - 5], [0, 1, 0]]), SIZE, borderMode=cv2.BORDER_REFLECT
        )
        for i in range(10)
    ]
    reader = VideoFileReader(str(path))
    try:
        assert reader.frame_count == 10
        assert reader.fps == pytest.approx(25.0)
        assert "320x240" in reader.description
        frames = []
        while (frame := reader.read()) is not None:
            frames.append(frame)
    finally:
        reader.close()

    assert len(frames) == 10
    for i, frame in enumerate(frames):
        assert frame.shape == (SIZE[1], SIZE[0], 3) and frame.dtype == np.uint8
        diffs = [mean_abs_diff(frame, w) for w in written]
        assert int(np.argmin(diffs)) == i, f"frame {i} looks like written frame {np.argmin(diffs)}"


def test_video_file_reader_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="not found"):
        VideoFileReader(str(tmp_path / "nope.mp4"))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01garbage" * 1000)
    with pytest.raises(CaptureError, match="cannot decode") as err:
        VideoFileReader(str(corrupt))
    assert str(corrupt) in str(err.value)
