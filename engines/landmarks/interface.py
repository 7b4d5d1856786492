"""Landmark stage, the interface every backend implements: 478 3D face landmarks per driver
frame (`Landmarks`), found by a `LandmarkDetector`; `choose_face` picks whom to follow.

Backends side by side: mediapipe_cpu (MediaPipe FaceMesh on the CPU), torch_path (our torch
port of the same networks: CUDA graphs, or TensorRT engines through tensorrt.py);
build.py picks one for the chosen engines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Landmarks:
    """One face: (478, 3) float32 pixel-scaled points (x·w, y·h, z·w) of a w × h frame."""

    points: np.ndarray
    width: int
    height: int
    t_capture: float
    index: int
    faces_seen: int = 1

    @property
    def center(self) -> np.ndarray:
        return self.points[:, :2].mean(0)

    @property
    def size(self) -> float:
        """Bounding-box diagonal, pixels."""
        span = self.points[:, :2].max(0) - self.points[:, :2].min(0)
        return float(np.hypot(*span))


class LandmarkDetector(Protocol):
    """Finds the followed face in a BGR frame, or None when there is none."""

    def detect(self, image: np.ndarray, t_capture: float, index: int) -> Landmarks | None: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class DeviceLandmarkDetector(LandmarkDetector, Protocol):
    """A detector that also takes a frame already on its device (the GPU frame loop uploads
    the next frame while this one is worked on)."""

    device: torch.device

    def detect_uploaded(
        self, frame: torch.Tensor, t_capture: float, index: int
    ) -> Landmarks | None: ...


def choose_face(
    faces: list[np.ndarray], previous: Landmarks | None, width: int, height: int
) -> int:
    """Index of the face to follow: the one continuing `previous` (its centre within half a
    face size of the old one), else the largest and most central."""
    centers = [f[:, :2].mean(0) for f in faces]
    sizes = [float(np.hypot(*(f[:, :2].max(0) - f[:, :2].min(0)))) for f in faces]
    if previous is not None:
        distances = [float(np.linalg.norm(c - previous.center)) for c in centers]
        best = int(np.argmin(distances))
        if distances[best] < 0.5 * previous.size:
            return best
    frame_center = np.array([width / 2, height / 2])
    diagonal = float(np.hypot(width, height))
    scores = [
        s * (1.0 - np.linalg.norm(c - frame_center) / diagonal)
        for s, c in zip(sizes, centers, strict=True)
    ]
    return int(np.argmax(scores))
