"""The stream pipeline's contract, on the CPU (and on CUDA too when a GPU is present): same
results as running the stages directly, in order and late by one submit (two with
upload_ahead, where frame N+1's upload comes before frame N's stages and frame N-1's
readback after them), per-stage timings, a failing frame failing alone, clear errors for
frames and stages that do not fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.runtime import cuda_stream
from engines.runtime.cuda_stream import Finished, StreamPipeline, host_buffer

torch.set_num_threads(1)

FRAME = (24, 32, 3)
OUT = (3, 12, 16)


def to_float(x: torch.Tensor, _tag: object = None) -> torch.Tensor:
    return x.permute(2, 0, 1).float() / 255.0


def shrink(x: torch.Tensor, _tag: object = None) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(x[None], 2)[0]


def to_bytes(x: torch.Tensor, _tag: object = None) -> torch.Tensor:
    return (x.flip(-1) * 255.0).round().clamp(0, 255).to(torch.uint8)


def same(x: torch.Tensor, _tag: object = None) -> torch.Tensor:
    return x


STAGES = [("to_float", to_float), ("shrink", shrink), ("to_bytes", to_bytes)]
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def direct(frame: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(frame.copy())
    for _, fn in STAGES:
        x = fn(x)
    return x.numpy()


def assert_close_to_direct(result: np.ndarray, frame: np.ndarray, device: str) -> None:
    """Exact on the CPU; on a GPU float rounding may move a value by one step."""
    tolerance = 0 if device == "cpu" else 1
    np.testing.assert_allclose(result.astype(int), direct(frame).astype(int), atol=tolerance)


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, FRAME, dtype=np.uint8) for _ in range(n)]


def images(done: list[Finished]) -> list[np.ndarray]:
    return [d.image for d in done]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("upload_ahead", [False, True])
def test_results_equal_the_stages_run_directly_in_order(device: str, upload_ahead: bool) -> None:
    pipe = StreamPipeline(STAGES, device, FRAME, OUT, upload_ahead=upload_ahead)
    inputs = frames(7)
    late = 2 if upload_ahead else 1
    returned = [pipe.submit(frame, tag=n) for n, frame in enumerate(inputs)]
    assert returned[:late] == [None] * late
    done = [d for d in returned[late:] if d is not None] + pipe.flush()

    assert [d.tag for d in done] == list(range(len(inputs)))
    for frame, d in zip(inputs, done, strict=True):
        assert d.image.shape == OUT and d.image.dtype == np.uint8
        assert_close_to_direct(d.image, frame, device)
    assert pipe.flush() == []


def test_latency_is_one_submit_and_flush_restarts_it() -> None:
    pipe = StreamPipeline([("id", same)], "cpu", FRAME, FRAME)
    a, b, c = frames(3, seed=1)
    assert pipe.submit(a) is None
    np.testing.assert_array_equal(pipe.submit(b).image, a)
    np.testing.assert_array_equal(images(pipe.flush()), [b])
    assert pipe.submit(c) is None  # after a flush the pipeline is empty again
    np.testing.assert_array_equal(images(pipe.flush()), [c])


def test_upload_ahead_is_two_submits_late_and_flush_returns_both_in_flight() -> None:
    pipe = StreamPipeline([("id", same)], "cpu", FRAME, FRAME, upload_ahead=True)
    a, b, c, d = frames(4, seed=2)
    assert pipe.submit(a) is None and pipe.submit(b) is None
    np.testing.assert_array_equal(pipe.submit(c).image, a)
    np.testing.assert_array_equal(images(pipe.flush()), [b, c])
    assert pipe.submit(d) is None
    np.testing.assert_array_equal(images(pipe.flush()), [d])


class RecordingRunner(cuda_stream._CpuRunner):
    """The CPU runner, doing its real work, noting each upload, run and readback by the
    frame index that each frame's first pixel holds."""

    events: list[tuple[str, int]]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.slot_frame: dict[int, int] = {}

    def put(self, slot: int, frame: np.ndarray | None) -> None:
        super().put(slot, frame)
        if frame is not None:
            self.slot_frame[slot] = int(frame[0, 0, 0])
            self.events.append(("upload", int(frame[0, 0, 0])))

    def run(self, slot: int, tag: object) -> None:
        self.events.append(("process", self.slot_frame[slot]))
        super().run(slot, tag)

    def collect(self, slot: int):
        done = super().collect(slot)
        self.events.append(("readback", self.slot_frame[slot]))
        return done


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    events: list[tuple[str, int]] = []
    monkeypatch.setattr(RecordingRunner, "events", events, raising=False)
    monkeypatch.setattr(cuda_stream, "_CpuRunner", RecordingRunner)
    return events


def numbered(n: int) -> list[np.ndarray]:
    return [np.full(FRAME, i, np.uint8) for i in range(n)]


def test_upload_ahead_uploads_the_next_frame_runs_this_one_then_reads_the_last_back(
    recorded: list[tuple[str, int]],
) -> None:
    pipe = StreamPipeline([("id", same)], "cpu", upload_ahead=True)
    steps = []
    for frame in numbered(5):
        start = len(recorded)
        pipe.submit(frame)
        steps.append(recorded[start:])
    start = len(recorded)
    pipe.flush()
    steps.append(recorded[start:])

    assert steps[0] == [("upload", 0)]
    assert steps[1] == [("upload", 1), ("process", 0)]
    for n in (2, 3, 4):  # upload(N+1), process(N), readback(N-1)
        assert steps[n] == [("upload", n), ("process", n - 1), ("readback", n - 2)]
    assert steps[5] == [("process", 4), ("readback", 3), ("readback", 4)]


def test_the_default_schedule_uploads_and_runs_a_frame_then_reads_the_last_back(
    recorded: list[tuple[str, int]],
) -> None:
    pipe = StreamPipeline([("id", same)], "cpu")
    for frame in numbered(3):
        pipe.submit(frame)
    pipe.flush()
    assert recorded == [
        ("upload", 0), ("process", 0),
        ("upload", 1), ("process", 1), ("readback", 0),
        ("upload", 2), ("process", 2), ("readback", 1),
        ("readback", 2),
    ]  # fmt: skip


def test_no_frame_means_nothing_uploaded_and_the_stages_get_none() -> None:
    seen = []

    def stage(x: torch.Tensor | None, tag: object) -> torch.Tensor:
        seen.append((tag, None if x is None else int(x[0, 0, 0])))
        return torch.full((2, 2), 0 if x is None else int(x[0, 0, 0]), dtype=torch.uint8)

    pipe = StreamPipeline([("s", stage)], "cpu", upload_ahead=True)
    for tag, frame in enumerate([numbered(8)[7], None, None, numbered(9)[8]]):
        pipe.submit(frame, tag)
    done = pipe.flush()
    assert seen == [(0, 7), (1, None), (2, None), (3, 8)]
    assert [int(d.image[0, 0]) for d in done] == [0, 8]
    assert "h2d" not in done[0].ms and "h2d" in done[1].ms


def test_buffers_follow_the_frame_shape_when_none_is_fixed() -> None:
    pipe = StreamPipeline([("id", same)], "cpu", upload_ahead=True)
    small, large = np.full((4, 6, 3), 1, np.uint8), np.full((8, 10, 3), 2, np.uint8)
    for frame in (small, large, small, large):
        pipe.submit(frame)
    done = pipe.flush()
    assert [d.image.shape for d in done] == [(4, 6, 3), (8, 10, 3)]


def test_a_failing_frame_fails_alone_and_in_its_place() -> None:
    def stage(x: torch.Tensor, tag: object) -> torch.Tensor:
        if tag == 2:
            raise RuntimeError("frame 2 went wrong")
        return x

    pipe = StreamPipeline([("s", stage)], "cpu", upload_ahead=True)
    done = [pipe.submit(frame, n) for n, frame in enumerate(numbered(5))][2:] + pipe.flush()
    assert [d.tag for d in done] == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="frame 2"):
        _ = done[2].image
    assert [int(d.image[0, 0, 0]) for d in done if d.tag != 2] == [0, 1, 3, 4]


def test_results_are_copies_not_views_of_reused_buffers() -> None:
    """An identity stage returns the input buffer itself; the caller may also reuse its frame
    array. Neither may change a result already handed back (or still in flight)."""
    pipe = StreamPipeline([("id", same)], "cpu", FRAME, FRAME)
    frame = np.zeros(FRAME, np.uint8)
    pipe.submit(frame)
    frame[...] = 7  # the caller reuses its array for the next capture
    first = pipe.submit(frame).image
    assert not first.any()
    pipe.submit(np.full(FRAME, 9, np.uint8))
    pipe.submit(np.full(FRAME, 11, np.uint8))
    assert not first.any()


def test_stage_timings_name_every_stage_and_are_not_negative() -> None:
    pipe = StreamPipeline(STAGES, "cpu", FRAME, OUT)
    assert pipe.stage_ms() == {}
    for frame in frames(3):
        pipe.submit(frame)
    timings = pipe.stage_ms()
    assert list(timings) == ["h2d", "to_float", "shrink", "to_bytes", "d2h"]
    assert all(isinstance(v, float) and v >= 0 for v in timings.values())


def test_slow_stage_shows_in_its_timing() -> None:
    """The sleep is the slow stage's floor (a sleep is never shorter); the fast stage, which
    does nothing, is not charged with it: a long sleep keeps the two far apart on a busy
    machine too (was 20 ms against a 15 ms line)."""
    slow_s = 0.2

    def slow(x: torch.Tensor, _tag: object) -> torch.Tensor:
        import time

        time.sleep(slow_s)
        return x

    pipe = StreamPipeline([("fast", same), ("slow", slow)], "cpu", FRAME, FRAME)
    pipe.submit(frames(1)[0])
    pipe.flush()
    timings = pipe.stage_ms()
    assert timings["slow"] >= 0.99 * slow_s * 1e3, timings
    assert timings["fast"] < 0.5 * slow_s * 1e3, timings


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((24, 31, 3), np.uint8),
        np.zeros(FRAME, np.float32),
        np.zeros((24, 32), np.uint8),
        [[0]],
    ],
)
def test_a_frame_that_does_not_fit_is_a_clear_error(frame) -> None:
    pipe = StreamPipeline(STAGES, "cpu", FRAME, OUT)
    with pytest.raises(ValueError, match=r"set up for \(24, 32, 3\) uint8"):
        pipe.submit(frame)
    assert pipe.flush() == []  # nothing was started


def test_a_last_stage_of_the_wrong_shape_names_the_stage() -> None:
    pipe = StreamPipeline(STAGES[:2], "cpu", FRAME, (12, 16, 3))
    pipe.submit(frames(1)[0])
    (done,) = pipe.flush()
    with pytest.raises(ValueError, match=r"last stage 'shrink' returned shape \(3, 12, 16\)"):
        _ = done.image


def test_the_result_is_cast_to_out_dtype() -> None:
    pipe = StreamPipeline(STAGES[:2], "cpu", FRAME, OUT, out_dtype=torch.float32)
    frame = frames(1)[0]
    pipe.submit(frame)
    (done,) = pipe.flush()
    assert done.image.dtype == np.float32
    expected = shrink(to_float(torch.from_numpy(frame))).numpy()
    np.testing.assert_array_equal(done.image, expected)


@pytest.mark.parametrize(
    "stages", [[], [("a", to_float), ("a", shrink)], [("h2d", to_float)], [("d2h", to_float)]]
)
def test_stage_names_are_unique_and_not_reserved(stages) -> None:
    with pytest.raises(ValueError, match="stage"):
        StreamPipeline(stages, "cpu", FRAME, OUT)


def test_host_buffers_are_pinned_only_with_cuda() -> None:
    buffer = host_buffer((4, 4), torch.uint8)
    assert buffer.is_pinned() == torch.cuda.is_available()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_stages_run_on_their_own_stream_after_the_upload() -> None:
    """The stages see the frame already uploaded (the compute stream waited for the copy
    stream), on a stream that is not the caller's."""
    seen = []

    def stage(x: torch.Tensor, tag: object) -> torch.Tensor:
        seen.append(torch.cuda.current_stream() != torch.cuda.default_stream())
        return x.clone()

    pipe = StreamPipeline([("s", stage)], "cuda", upload_ahead=True)
    inputs = [np.full((720, 1280, 3), n, np.uint8) for n in range(6)]
    done = [d for d in (pipe.submit(f, n) for n, f in enumerate(inputs)) if d] + pipe.flush()
    assert all(seen) and len(seen) == 6
    for n, d in enumerate(done):
        assert d.tag == n and (d.image == n).all()
    assert set(pipe.stage_ms()) == {"h2d", "s", "d2h"}
