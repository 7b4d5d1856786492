"""Rolling per-stage timing (capture age, each stage, sink writes) and output rate."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class StageSummary:
    median_ms: float
    p95_ms: float
    count: int


class RollingStats:
    """The last `window` samples per stage; safe to record from several threads."""

    def __init__(self, window: int = 300):
        self._window = window
        self._stages: dict[str, deque[float]] = {}
        self._frame_times: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def record(self, stage: str, ms: float) -> None:
        with self._lock:
            samples = self._stages.get(stage)
            if samples is None:
                samples = self._stages[stage] = deque(maxlen=self._window)
            samples.append(ms)

    def frame_published(self, t: float) -> None:
        with self._lock:
            self._frame_times.append(t)

    def fps(self) -> float:
        """Output frames per second over the window (0 until two frames exist)."""
        with self._lock:
            times = tuple(self._frame_times)
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def summary(self) -> dict[str, StageSummary]:
        with self._lock:
            stages = {name: np.fromiter(s, float) for name, s in self._stages.items() if s}
        return {
            name: StageSummary(float(np.median(a)), float(np.percentile(a, 95)), a.size)
            for name, a in stages.items()
        }

    def format_table(self) -> str:
        rows = [f"{'stage':<24}{'median ms':>10}{'p95 ms':>10}{'n':>7}"]
        for name, s in self.summary().items():
            rows.append(f"{name:<24}{s.median_ms:>10.2f}{s.p95_ms:>10.2f}{s.count:>7}")
        return "\n".join(rows)
