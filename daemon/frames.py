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


@dataclass(frozen=True, slots=True)
class DriverView:
    """The driver frame and its landmarks, lent to a generator that asked for the driver's
    own pixels (mouth_interior: driver); no other generator ever sees the camera."""

    image: np.ndarray
    points: np.ndarray  # (478, 3) pixel-scaled landmarks of `image`
