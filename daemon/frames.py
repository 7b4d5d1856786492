"""Small immutable frames passed between the pipeline stages; each carries its timestamp."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class CapturedFrame:
    """One camera (driver) frame: BGR uint8, with the monotonic time it was captured."""

    image: np.ndarray
    t_capture: float
    index: int


@dataclass(frozen=True, slots=True)
class OutputFrame:
    """One published frame: BGR uint8 at the output size, never a camera frame."""

    image: np.ndarray
    t_capture: float | None  # the driver frame it was made from (None: idle)
    index: int
