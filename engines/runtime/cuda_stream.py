"""The per-frame GPU pipeline's mechanics: camera frame in, stages, result out, overlapped.

On CUDA a frame goes up on a copy stream (from page-locked memory, async), the stages run
on a compute stream that waits for that copy (an event, not the host), and the result comes
back into page-locked memory with an async copy; the host waits only when it collects a
result, which by then the GPU has long finished. Two schedules share that machinery:

- default: `submit(frame N)` uploads N and runs its stages, and returns frame N-1's result
  (one submit of latency); N's upload overlaps N-1's tail on the GPU.
- `upload_ahead`: `submit(frame N+1)` uploads N+1 while frame N (uploaded by the previous
  submit) runs its stages, and returns frame N-1's result, whose readback went on while N
  ran. For stages that read back in the middle (the daemon's GPU frame loop reads the
  landmarks back for the motion estimate), so the upload is not stuck behind them. Each
  result comes out two submits after its frame went in: the price of the overlap.

On a CPU device the same interface and schedules run synchronously (plain tensors,
perf_counter timings), so the pipeline logic is testable anywhere.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch

log = logging.getLogger(__name__)

T = TypeVar("T")
# A stage gets the tensor so far (the uploaded frame for the first stage, None when
# nothing was uploaded for this submit) and the submit's tag.
StageFn = Callable[[Any, Any], torch.Tensor]
Stage = tuple[str, StageFn]
RESERVED_NAMES = ("h2d", "d2h")


def upload(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A host array on `device`. To CUDA through page-locked memory with an async copy: a
    plain .to(cuda) from pageable memory makes the host wait for the whole stream first
    (torch synchronises after a blocking copy), which serialises the per-frame numpy work
    with the GPU's. The caching host allocator keeps the pinned block until the copy ran."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def host_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A host tensor, page-locked when CUDA exists (needed for truly async copies)."""
    return torch.empty(shape, dtype=dtype, pin_memory=torch.cuda.is_available())


def check_frame(frame: np.ndarray, frame_shape: tuple[int, ...] | None) -> None:
    fits = isinstance(frame, np.ndarray) and frame.dtype == np.uint8
    if fits and (frame_shape is None or frame.shape == frame_shape):
        return
    got = f"{frame.shape} {frame.dtype}" if isinstance(frame, np.ndarray) else type(frame).__name__
    wanted = "uint8 frames" if frame_shape is None else f"{frame_shape} uint8"
    raise ValueError(f"frame is {got}; this pipeline was set up for {wanted}")


def check_output(x: torch.Tensor, out_shape: tuple[int, ...] | None, stage: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"the last stage {stage!r} returned {type(x).__name__}, not a tensor")
    if out_shape is not None and tuple(x.shape) != out_shape:
        raise ValueError(
            f"the last stage {stage!r} returned shape {tuple(x.shape)}, expected {out_shape}"
        )


def check_stages(stages: Sequence[Stage]) -> None:
    names = [name for name, _ in stages]
    if not names:
        raise ValueError("a pipeline needs at least one stage")
    clash = sorted({n for n in names if names.count(n) > 1 or n in RESERVED_NAMES})
    if clash:
        raise ValueError(f"stage names must be unique and not {RESERVED_NAMES}: {clash}")


@dataclass(frozen=True, slots=True)
class Finished(Generic[T]):
    """One frame's outcome, handed back in submission order with the tag it was given."""

    tag: T | None
    ms: dict[str, float]
    result: np.ndarray | None = None
    error: Exception | None = None

    @property
    def image(self) -> np.ndarray:
        """The result (a copy of its own); raises what the frame's stages raised."""
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@dataclass(frozen=True, slots=True)
class _Outcome:
    result: np.ndarray | None
    error: Exception | None
    ms: dict[str, float]


@dataclass(slots=True)
class _Config:
    stages: list[Stage]
    out_shape: tuple[int, ...] | None
    out_dtype: torch.dtype

    def run(self, x: torch.Tensor | None, tag: object, mark: Callable[[], None]) -> torch.Tensor:
        """The stages in order, `mark` after each; the last one's output, checked."""
        for _, fn in self.stages:
            x = fn(x, tag)
            mark()
        assert x is not None
        check_output(x, self.out_shape, self.stages[-1][0])
        return x


class _CpuRunner:
    """Synchronous: `run` does the stages and the copy out at once, `collect` hands it back."""

    def __init__(self, config: _Config, slots: int) -> None:
        self._config = config
        self._host_in: list[torch.Tensor | None] = [None] * slots
        self._has_input = [False] * slots
        self._done: list[_Outcome | None] = [None] * slots
        self._h2d_ms = [0.0] * slots

    def put(self, slot: int, frame: np.ndarray | None) -> None:
        self._has_input[slot] = frame is not None
        if frame is None:
            return
        start = time.perf_counter()
        buffer = self._host_in[slot]
        if buffer is None or tuple(buffer.shape) != frame.shape:
            buffer = self._host_in[slot] = torch.empty(frame.shape, dtype=torch.uint8)
        buffer.numpy()[...] = frame
        self._h2d_ms[slot] = (time.perf_counter() - start) * 1e3

    def run(self, slot: int, tag: object) -> None:
        clock = time.perf_counter
        x = self._host_in[slot] if self._has_input[slot] else None
        ms = {} if x is None else {"h2d": self._h2d_ms[slot]}
        names = iter(name for name, _ in self._config.stages)
        start = clock()

        def mark() -> None:
            nonlocal start
            now = clock()
            ms[next(names)] = (now - start) * 1e3
            start = now

        try:
            out = self._config.run(x, tag, mark)
            start = clock()
            result = out.to(self._config.out_dtype, copy=True).numpy()  # never a view
            ms["d2h"] = (clock() - start) * 1e3
            self._done[slot] = _Outcome(result, None, ms)
        except Exception as error:
            self._done[slot] = _Outcome(None, error, {})

    def collect(self, slot: int) -> _Outcome:
        done, self._done[slot] = self._done[slot], None
        assert done is not None, "collect without run"
        return done


def _event() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)


@dataclass(slots=True)
class _CudaSlot:
    """One in-flight frame's buffers (made for the frame's shape) and events."""

    h2d_start: torch.cuda.Event
    h2d_end: torch.cuda.Event
    bounds: list[torch.cuda.Event]  # before stage 0, after each stage
    done: torch.cuda.Event  # after the device→host copy of the result (or a failure)
    host_in: torch.Tensor | None = None
    dev_in: torch.Tensor | None = None
    host_out: torch.Tensor | None = None
    has_input: bool = False
    error: Exception | None = None


class _CudaRunner:
    """A copy stream and a compute stream, one slot per frame in flight. Invariant that
    makes reuse safe with no extra waits: a slot is put again only after its previous
    frame was collected, and `collect` waits for that frame's `done` event, which follows
    its upload (the compute stream waited for it), its stages and its readback."""

    def __init__(self, config: _Config, device: torch.device, slots: int) -> None:
        self._config = config
        self._device = device
        self._copy = torch.cuda.Stream(device)
        self._compute = torch.cuda.Stream(device)
        self._slots = [
            _CudaSlot(
                h2d_start=_event(),
                h2d_end=_event(),
                bounds=[_event() for _ in range(len(config.stages) + 1)],
                done=_event(),
            )
            for _ in range(slots)
        ]

    def put(self, slot: int, frame: np.ndarray | None) -> None:
        s = self._slots[slot]
        s.has_input = frame is not None
        if frame is None:
            return
        if s.host_in is None or s.dev_in is None or tuple(s.host_in.shape) != frame.shape:
            s.host_in = host_buffer(frame.shape, torch.uint8)  # free: see the invariant
            s.dev_in = torch.empty(frame.shape, dtype=torch.uint8, device=self._device)
        s.host_in.numpy()[...] = frame
        with torch.cuda.stream(self._copy):
            s.h2d_start.record()
            s.dev_in.copy_(s.host_in, non_blocking=True)
            s.h2d_end.record()

    def run(self, slot: int, tag: object) -> None:
        s = self._slots[slot]
        s.error = None
        after_each = iter(s.bounds[1:])
        # what the caller queued before (a new generator's uploads at a reload) comes first
        self._compute.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(self._compute):
            if s.has_input:
                self._compute.wait_event(s.h2d_end)
            s.bounds[0].record()
            try:
                x = self._config.run(
                    s.dev_in if s.has_input else None, tag, lambda: next(after_each).record()
                )
                s.host_out = self._out_buffer(s.host_out, tuple(x.shape))
                s.host_out.copy_(x, non_blocking=True)
            except Exception as error:
                s.error = error
            finally:
                s.done.record()

    def _out_buffer(self, buffer: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
        dtype = self._config.out_dtype
        if buffer is None or tuple(buffer.shape) != shape or buffer.dtype != dtype:
            return host_buffer(shape, dtype)
        return buffer

    def collect(self, slot: int) -> _Outcome:
        s = self._slots[slot]
        s.done.synchronize()  # the one host wait per frame
        if s.error is not None:
            return _Outcome(None, s.error, {})
        assert s.host_out is not None
        ms = {"h2d": s.h2d_start.elapsed_time(s.h2d_end)} if s.has_input else {}
        for (name, _), before, after in zip(
            self._config.stages, s.bounds, s.bounds[1:], strict=True
        ):
            ms[name] = before.elapsed_time(after)
        ms["d2h"] = s.bounds[-1].elapsed_time(s.done)
        return _Outcome(s.host_out.numpy().copy(), None, ms)


@dataclass(frozen=True, slots=True)
class _Job(Generic[T]):
    slot: int
    tag: T | None


class StreamPipeline(Generic[T]):
    """uint8 frames in, the stages' result out, in order, late (see the module doc).

    Each stage maps (tensor, tag) to a tensor on `device`; the first receives the frame as
    a uint8 tensor (None when `submit` was given no frame: nothing new to upload), the last
    must return a tensor (of `out_shape` when given), copied back as `out_dtype`. A stage
    that raises fails only its own frame: the error comes back where its result would
    have (`Finished.image`). Frames must fit `frame_shape` when given; else buffers
    follow each frame's shape. Stages should not synchronise the host, or the overlap is
    lost, except where the work needs a value on the host (see `upload_ahead`).
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        device: str | torch.device,
        frame_shape: tuple[int, ...] | None = None,
        out_shape: tuple[int, ...] | None = None,
        *,
        out_dtype: torch.dtype = torch.uint8,
        upload_ahead: bool = False,
    ) -> None:
        check_stages(stages)
        self.device = torch.device(device)
        self.frame_shape = None if frame_shape is None else tuple(frame_shape)
        self.upload_ahead = upload_ahead
        config = _Config(list(stages), None if out_shape is None else tuple(out_shape), out_dtype)
        self._slots = 3 if upload_ahead else 2  # frames between put and collect, plus one
        self._runner: _CpuRunner | _CudaRunner
        if self.device.type == "cuda":
            self._runner = _CudaRunner(config, self.device, self._slots)
        else:
            self._runner = _CpuRunner(config, self._slots)
        self._next_slot = 0
        self._uploaded: _Job[T] | None = None  # upload_ahead: put, not yet run
        self._in_flight: deque[_Job[T]] = deque()  # run, not yet collected
        self._last_ms: dict[str, float] = {}

    def submit(self, frame: np.ndarray | None, tag: T | None = None) -> Finished[T] | None:
        """Upload `frame` (None: nothing new) and run the frame due; return the oldest
        frame in flight once the pipeline is full (None before)."""
        if frame is not None:
            check_frame(frame, self.frame_shape)
        job = _Job(self._next_slot, tag)
        with torch.inference_mode():
            self._runner.put(job.slot, frame)
            self._next_slot = (self._next_slot + 1) % self._slots
            due: _Job[T] | None = job
            if self.upload_ahead:
                due, self._uploaded = self._uploaded, job
            if due is not None:
                self._runner.run(due.slot, due.tag)
                self._in_flight.append(due)
        return self._collect() if len(self._in_flight) > 1 else None

    def flush(self) -> list[Finished[T]]:
        """Every frame still in flight, run and collected, oldest first."""
        due, self._uploaded = self._uploaded, None
        if due is not None:
            with torch.inference_mode():
                self._runner.run(due.slot, due.tag)
            self._in_flight.append(due)
        return [self._collect() for _ in range(len(self._in_flight))]

    def stage_ms(self) -> dict[str, float]:
        """Milliseconds per stage of the last frame collected whole: h2d (when it had a
        frame), each stage, d2h. GPU time on CUDA, wall time on CPU."""
        return dict(self._last_ms)

    def _collect(self) -> Finished[T]:
        job = self._in_flight.popleft()
        outcome = self._runner.collect(job.slot)
        if outcome.error is None:
            self._last_ms = outcome.ms
        return Finished(job.tag, outcome.ms, outcome.result, outcome.error)
