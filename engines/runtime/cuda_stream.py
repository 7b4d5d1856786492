"""The per-frame GPU pipeline's mechanics: camera frame in, stages, result out, overlapped.

On CUDA, frame N+1 is copied host→device on a copy stream while frame N's stages run on a
compute stream (events order them), the result comes back through pinned memory with an
async copy, and the only host wait is the readback of the previous frame: `submit` returns
frame N-1's result while the GPU works on frame N (one frame of latency, no idle GPU).
CUDA events time each stage; optionally the stages are captured once into a CUDA graph
per slot and replayed. On a CPU device the same interface runs synchronously (plain
tensors, perf_counter timings), so the pipeline logic is testable anywhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

log = logging.getLogger(__name__)

Stage = tuple[str, Callable[[torch.Tensor], torch.Tensor]]
RESERVED_NAMES = ("h2d", "d2h", "graph")
GRAPH_WARMUP_FRAMES = 3  # eager frames before capture (lazy inits, cudnn autotuning)


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


def check_frame(frame: np.ndarray, frame_shape: tuple[int, ...]) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != frame_shape:
        got = (
            f"{frame.shape} {frame.dtype}"
            if isinstance(frame, np.ndarray)
            else type(frame).__name__
        )
        raise ValueError(f"frame is {got}; this pipeline was set up for {frame_shape} uint8")


def check_output(x: torch.Tensor, out_shape: tuple[int, ...], stage: str) -> None:
    if tuple(x.shape) != out_shape:
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


class _CpuRunner:
    """Synchronous: `launch` does the whole frame, `collect` hands back the stored result."""

    def __init__(
        self,
        stages: Sequence[Stage],
        frame_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        out_dtype: torch.dtype,
    ) -> None:
        self._stages = list(stages)
        self._out_shape = out_shape
        self._host_in = [host_buffer(frame_shape, torch.uint8) for _ in range(2)]
        self._host_out = [host_buffer(out_shape, out_dtype) for _ in range(2)]
        self._done: list[tuple[np.ndarray, dict[str, float]] | None] = [None, None]

    def launch(self, slot: int, frame: np.ndarray) -> None:
        clock = time.perf_counter
        ms: dict[str, float] = {}
        start = clock()
        self._host_in[slot].numpy()[...] = frame
        x = self._host_in[slot]
        ms["h2d"] = (clock() - start) * 1e3
        for name, fn in self._stages:
            start = clock()
            x = fn(x)
            ms[name] = (clock() - start) * 1e3
        check_output(x, self._out_shape, self._stages[-1][0])
        start = clock()
        result = self._host_out[slot].copy_(x).numpy().copy()
        ms["d2h"] = (clock() - start) * 1e3
        self._done[slot] = (result, ms)

    def collect(self, slot: int) -> tuple[np.ndarray, dict[str, float]]:
        done, self._done[slot] = self._done[slot], None
        assert done is not None, "collect without launch"
        return done


@dataclass(slots=True)
class _CudaSlot:
    """One of the two in-flight frames: its buffers, events and (optional) graph."""

    host_in: torch.Tensor
    dev_in: torch.Tensor
    host_out: torch.Tensor
    h2d_start: torch.cuda.Event
    h2d_end: torch.cuda.Event
    bounds: list[torch.cuda.Event]  # before stage 0, after each stage
    done: torch.cuda.Event  # after the device→host copy of the result
    graph: torch.cuda.CUDAGraph | None = None
    graph_out: torch.Tensor | None = None
    timed_stages: list[str] = field(default_factory=list)


def _event() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)


class _CudaRunner:
    """Two slots, a copy stream and a compute stream. Invariant that makes reuse safe with no
    extra waits: a slot is launched again only after its previous frame was collected, and
    `collect` waits for that frame's `done` event, which follows its copy and its stages."""

    def __init__(
        self,
        stages: Sequence[Stage],
        device: torch.device,
        frame_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        out_dtype: torch.dtype,
        cuda_graph: bool,
    ) -> None:
        self._stages = list(stages)
        self._out_shape = out_shape
        self._cuda_graph = cuda_graph
        self._launched = 0
        self._copy = torch.cuda.Stream(device)
        self._compute = torch.cuda.Stream(device)
        self._slots = [
            _CudaSlot(
                host_in=host_buffer(frame_shape, torch.uint8),
                dev_in=torch.empty(frame_shape, dtype=torch.uint8, device=device),
                host_out=host_buffer(out_shape, out_dtype),
                h2d_start=_event(),
                h2d_end=_event(),
                bounds=[_event() for _ in range(len(stages) + 1)],
                done=_event(),
            )
            for _ in range(2)
        ]

    @property
    def uses_graph(self) -> bool:
        return any(s.graph is not None for s in self._slots)

    def launch(self, slot: int, frame: np.ndarray) -> None:
        s = self._slots[slot]
        s.host_in.numpy()[...] = frame  # free: its last H2D finished before its collect
        with torch.cuda.stream(self._copy):
            s.h2d_start.record()
            s.dev_in.copy_(s.host_in, non_blocking=True)
            s.h2d_end.record()
        if self._cuda_graph and s.graph is None and self._launched >= GRAPH_WARMUP_FRAMES:
            self._capture(s)
        with torch.cuda.stream(self._compute):
            self._compute.wait_event(s.h2d_end)
            x = self._replay(s) if s.graph is not None else self._run_eager(s)
            s.host_out.copy_(x, non_blocking=True)
            s.done.record()
        self._launched += 1

    def _run_eager(self, s: _CudaSlot) -> torch.Tensor:
        x = s.dev_in
        s.bounds[0].record()
        for (_, fn), after in zip(self._stages, s.bounds[1:], strict=True):
            x = fn(x)
            after.record()
        check_output(x, self._out_shape, self._stages[-1][0])
        s.timed_stages = ["graph"] if self._cuda_graph else [n for n, _ in self._stages]
        return x

    def _replay(self, s: _CudaSlot) -> torch.Tensor:
        assert s.graph is not None and s.graph_out is not None
        s.bounds[0].record()
        s.graph.replay()
        s.bounds[-1].record()
        s.timed_stages = ["graph"]
        return s.graph_out

    def _capture(self, s: _CudaSlot) -> None:
        """Record the stages on this slot's fixed input once; later frames replay them."""
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads' CUDA work (preview, web) must not void the capture
        with torch.cuda.graph(graph, stream=self._compute, capture_error_mode="thread_local"):
            x = s.dev_in
            for _, fn in self._stages:
                x = fn(x)
        check_output(x, self._out_shape, self._stages[-1][0])
        s.graph, s.graph_out = graph, x
        log.debug("captured the %d stages into a CUDA graph", len(self._stages))

    def collect(self, slot: int) -> tuple[np.ndarray, dict[str, float]]:
        s = self._slots[slot]
        s.done.synchronize()  # the one host wait per frame
        ms = {"h2d": s.h2d_start.elapsed_time(s.h2d_end)}
        if s.timed_stages == ["graph"]:
            ms["graph"] = s.bounds[0].elapsed_time(s.bounds[-1])
        else:
            for name, before, after in zip(s.timed_stages, s.bounds, s.bounds[1:], strict=False):
                ms[name] = before.elapsed_time(after)
        ms["d2h"] = s.bounds[-1].elapsed_time(s.done)
        return s.host_out.numpy().copy(), ms


class StreamPipeline:
    """uint8 frames in, the stages' result out, one frame behind (see the module doc).

    Each stage maps a tensor to a tensor on `device`; the first receives the frame as a
    uint8 tensor of `frame_shape`, the last must return `out_shape` (cast to `out_dtype`).
    Stages must not synchronise the host, or the overlap is lost.
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        device: str | torch.device,
        frame_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        *,
        out_dtype: torch.dtype = torch.uint8,
        cuda_graph: bool = False,
    ) -> None:
        check_stages(stages)
        self.device = torch.device(device)
        self.frame_shape = tuple(frame_shape)
        self.out_shape = tuple(out_shape)
        self._runner: _CpuRunner | _CudaRunner
        if self.device.type == "cuda":
            self._runner = _CudaRunner(
                stages, self.device, self.frame_shape, self.out_shape, out_dtype, cuda_graph
            )
        else:
            if cuda_graph:
                log.debug("cuda_graph ignored on %s", self.device)
            self._runner = _CpuRunner(stages, self.frame_shape, self.out_shape, out_dtype)
        self._next_slot = 0
        self._pending: int | None = None
        self._last_ms: dict[str, float] = {}

    @property
    def uses_graph(self) -> bool:
        return isinstance(self._runner, _CudaRunner) and self._runner.uses_graph

    def submit(self, frame: np.ndarray) -> np.ndarray | None:
        """Start `frame`; return the previous frame's result (None for the first)."""
        check_frame(frame, self.frame_shape)
        slot = self._next_slot
        with torch.inference_mode():
            self._runner.launch(slot, frame)
        self._next_slot ^= 1
        previous, self._pending = self._pending, slot
        return None if previous is None else self._collect(previous)

    def flush(self) -> np.ndarray | None:
        """The result of the frame still in flight (None when there is none)."""
        previous, self._pending = self._pending, None
        return None if previous is None else self._collect(previous)

    def stage_ms(self) -> dict[str, float]:
        """Milliseconds per stage of the last collected frame: h2d, each stage (or `graph`
        when a CUDA graph is used), d2h. GPU time on CUDA, wall time on CPU."""
        return dict(self._last_ms)

    def _collect(self, slot: int) -> np.ndarray:
        result, self._last_ms = self._runner.collect(slot)
        return result
