"""The hand-offs behind the web preview and remote mode: the frame loop's FrameRelay (latest
wins, never a queue), the frame loop publishing a remote peer's frames while they are fresh,
and the time code the round-trip benchmark relies on."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from thc_testing.timecode import read_timecode, stamp_timecode

from daemon.capture import Capture
from daemon.config import CaptureConfig, NullSinkConfig, OutputConfig, StillGeneratorConfig
from daemon.frames import OutputFrame
from daemon.pipeline import FrameLoop, FrameRelay, Pipeline
from daemon.sinks import SinkSet
from daemon.stats import RollingStats
from engines.generator.interface import letterbox
from engines.generator.still import StillGenerator

WIDTH, HEIGHT = 320, 180


class Clock:
    """An injectable monotonic clock."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def frame(index: int, value: int = 0, size: tuple[int, int] = (WIDTH, HEIGHT)) -> OutputFrame:
    return OutputFrame(np.full((size[1], size[0], 3), value, np.uint8), None, index)


def test_the_relay_keeps_only_the_newest_frame_and_tells_listeners():
    relay = FrameRelay()
    told: list[int] = []
    stop = relay.listen(lambda: told.append(relay.latest().index))
    assert relay.latest() is None
    for i in range(5):
        relay.post(frame(i))
    assert relay.latest().index == 4 and relay.frames_posted == 5
    assert told == [0, 1, 2, 3, 4]
    stop()
    relay.post(frame(5))
    assert told == [0, 1, 2, 3, 4]  # no longer listening
    relay.clear()
    assert relay.latest() is None


def test_a_reader_waits_for_a_newer_frame_and_skips_the_ones_it_missed():
    relay = FrameRelay()
    relay.post(frame(0))
    assert relay.wait_newer(0, timeout_s=0.05) is None  # nothing newer: bounded wait
    got: list[OutputFrame | None] = []
    reader = threading.Thread(target=lambda: got.append(relay.wait_newer(0, timeout_s=10)))
    reader.start()
    for i in (1, 2, 3):
        relay.post(frame(i))
    reader.join(10)
    assert got and got[0] is not None and got[0].index >= 1
    assert relay.wait_newer(1, timeout_s=0).index == 3  # a late reader gets the newest


def test_a_stale_frame_counts_as_none():
    clock = Clock()
    relay = FrameRelay(clock)
    relay.post(frame(0))
    assert relay.latest(max_age_s=0.5) is not None
    clock.t += 0.6
    assert relay.latest(max_age_s=0.5) is None
    assert relay.latest() is not None


@pytest.fixture
def loop(tmp_path: Path, face_image: np.ndarray):
    clock = Clock()
    stats = RollingStats()
    capture = Capture(CaptureConfig(source=str(tmp_path / "absent.mp4"))).start()
    generator = StillGenerator(StillGeneratorConfig(), face_image, WIDTH, HEIGHT)
    sinks = SinkSet(stats)
    sinks.configure([NullSinkConfig(type="null")], OutputConfig(width=WIDTH, height=HEIGHT))
    yield FrameLoop(capture, Pipeline(generator, stats, WIDTH, HEIGHT), sinks, 25, stats, clock)
    sinks.close()
    capture.close()


def test_the_frame_loop_posts_every_published_frame_to_its_relay(loop, face_image):
    published = [loop.step() for _ in range(3)]
    assert loop.relay.frames_posted == 3
    assert loop.relay.latest() is published[-1]
    assert np.array_equal(loop.relay.latest().image, letterbox(face_image, WIDTH, HEIGHT))


def test_a_fresh_external_frame_is_published_instead_of_the_pipeline(loop, face_image):
    """web.remote.publish: a remote peer's avatar goes to the sinks while it keeps coming."""
    remote = FrameRelay(loop._clock)
    loop.external = remote
    still = letterbox(face_image, WIDTH, HEIGHT)
    assert np.array_equal(loop.step().image, still)  # nothing posted yet
    peer = np.full((90, 160, 3), 200, np.uint8)  # the peer's own (smaller) size
    remote.post(OutputFrame(peer, 99.5, 7))
    published = loop.step()
    assert published.image.shape == (HEIGHT, WIDTH, 3)
    assert np.array_equal(published.image, cv2.resize(peer, (WIDTH, HEIGHT)))
    assert published.t_capture == 99.5 and loop.relay.latest() is published
    loop._clock.t += loop.EXTERNAL_STALE_S + 0.1  # the peer stopped sending
    assert np.array_equal(loop.step().image, still)


@pytest.mark.parametrize("size", [(640, 480), (320, 180), (1280, 720)])
def test_the_time_code_survives_a_round_trip_through_an_image(size, face_image):
    image = cv2.resize(face_image, size)
    for code in (0, 1, 0xABCDEF, 0xFFFFFF, 123456):
        stamp_timecode(image, code)
        assert read_timecode(image) == code
    blurred = cv2.GaussianBlur(image, (5, 5), 0)  # as after a lossy codec
    assert read_timecode(blurred) == 123456
