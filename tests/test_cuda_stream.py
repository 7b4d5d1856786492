"""The stream pipeline's contract, on the CPU (and on CUDA too when a GPU is present): same
results as running the stages directly, one frame of latency, per-stage timings, clear
errors for frames and stages that do not fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.runtime.cuda_stream import StreamPipeline, host_buffer

torch.set_num_threads(1)

FRAME = (24, 32, 3)
OUT = (3, 12, 16)


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.permute(2, 0, 1).float() / 255.0


def shrink(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(x[None], 2)[0]


def to_bytes(x: torch.Tensor) -> torch.Tensor:
    return (x.flip(-1) * 255.0).round().clamp(0, 255).to(torch.uint8)


STAGES = [("to_float", to_float), ("shrink", shrink), ("to_bytes", to_bytes)]
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def direct(frame: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(frame.copy())
    for _, fn in STAGES:
        x = fn(x)
    return x.numpy()


def assert_close_to_direct(result: np.ndarray | None, frame: np.ndarray, device: str) -> None:
    """Exact on the CPU; on a GPU float rounding may move a value by one step."""
    assert result is not None
    tolerance = 0 if device == "cpu" else 1
    np.testing.assert_allclose(result.astype(int), direct(frame).astype(int), atol=tolerance)


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, FRAME, dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("graph", [False, True])
def test_results_equal_the_stages_run_directly_one_frame_late(device: str, graph: bool) -> None:
    pipe = StreamPipeline(STAGES, device, FRAME, OUT, cuda_graph=graph)
    inputs = frames(7)
    results = [pipe.submit(frame) for frame in inputs]
    results.append(pipe.flush())

    assert results[0] is None
    for frame, result in zip(inputs, results[1:], strict=True):
        assert result is not None and result.shape == OUT and result.dtype == np.uint8
        assert_close_to_direct(result, frame, device)
    assert pipe.flush() is None


def test_latency_is_exactly_one_frame_and_flush_restarts_it() -> None:
    pipe = StreamPipeline([("id", lambda x: x)], "cpu", FRAME, FRAME)
    a, b, c = frames(3, seed=1)
    assert pipe.submit(a) is None
    np.testing.assert_array_equal(pipe.submit(b), a)
    np.testing.assert_array_equal(pipe.flush(), b)
    assert pipe.submit(c) is None  # after a flush the pipeline is empty again
    np.testing.assert_array_equal(pipe.flush(), c)


def test_results_are_copies_not_views_of_reused_buffers() -> None:
    """An identity stage returns the input buffer itself; the caller may also reuse its frame
    array. Neither may change a result already handed back (or still in flight)."""
    pipe = StreamPipeline([("id", lambda x: x)], "cpu", FRAME, FRAME)
    frame = np.zeros(FRAME, np.uint8)
    pipe.submit(frame)
    frame[...] = 7  # the caller reuses its array for the next capture
    first = pipe.submit(frame)
    assert first is not None and not first.any()
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

    def slow(x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(slow_s)
        return x

    pipe = StreamPipeline([("fast", lambda x: x), ("slow", slow)], "cpu", FRAME, FRAME)
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
    assert pipe.flush() is None  # nothing was started


def test_a_last_stage_of_the_wrong_shape_names_the_stage() -> None:
    pipe = StreamPipeline(STAGES[:2], "cpu", FRAME, (12, 16, 3))
    with pytest.raises(ValueError, match=r"last stage 'shrink' returned shape \(3, 12, 16\)"):
        pipe.submit(frames(1)[0])


def test_the_result_is_cast_to_out_dtype() -> None:
    pipe = StreamPipeline(STAGES[:2], "cpu", FRAME, OUT, out_dtype=torch.float32)
    frame = frames(1)[0]
    pipe.submit(frame)
    result = pipe.flush()
    assert result is not None and result.dtype == np.float32
    expected = shrink(to_float(torch.from_numpy(frame))).numpy()
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize(
    "stages", [[], [("a", to_float), ("a", shrink)], [("h2d", to_float)], [("graph", to_float)]]
)
def test_stage_names_are_unique_and_not_reserved(stages) -> None:
    with pytest.raises(ValueError, match="stage"):
        StreamPipeline(stages, "cpu", FRAME, OUT)


def test_cuda_graph_flag_is_harmless_on_the_cpu() -> None:
    pipe = StreamPipeline(STAGES, "cpu", FRAME, OUT, cuda_graph=True)
    for frame in frames(5):
        pipe.submit(frame)
    assert not pipe.uses_graph
    assert "to_float" in pipe.stage_ms()


def test_host_buffers_are_pinned_only_with_cuda() -> None:
    buffer = host_buffer((4, 4), torch.uint8)
    assert buffer.is_pinned() == torch.cuda.is_available()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replays_after_warmup_and_reports_one_graph_stage() -> None:
    pipe = StreamPipeline(STAGES, "cuda", FRAME, OUT, cuda_graph=True)
    inputs = frames(8)
    results = [*[pipe.submit(f) for f in inputs][1:], pipe.flush()]
    assert pipe.uses_graph
    for frame, result in zip(inputs, results, strict=True):
        assert_close_to_direct(result, frame, "cuda")
    assert list(pipe.stage_ms()) == ["h2d", "graph", "d2h"]
