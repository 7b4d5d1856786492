"""Generator stage, the interface every backend implements: the output frame from the avatar
and the driver's motion.

Backends are picked by `generator.type` and the engines (build.py): still.py (the image,
unanimated), mesh_cpu.py (the mesh generator, OpenCV) and mesh_torch.py (its pixel work in
torch, on the GPU). Every backend renders at the output size from the motion alone: it never
receives, returns or blends in a camera frame, except the driver view a generator configured
to use the driver's pixels asks for: to show the driver's own mouth (mouth_interior: driver),
or to carry its expression wrinkles over as a band-passed luminance ratio (skin_detail:
driver, which shows none of the driver's own pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import cv2
import numpy as np

from engines.motion.estimator import Motion

if TYPE_CHECKING:
    import torch

LETTERBOX_BGR = (0, 0, 0)


@dataclass(frozen=True, slots=True)
class DriverView:
    """The driver frame and its landmarks, lent to a generator that asked for the driver's
    own pixels (mouth_interior: driver, skin_detail: driver); no other generator ever sees
    the camera."""

    image: np.ndarray
    points: np.ndarray  # (478, 3) pixel-scaled landmarks of `image`


class Generator(Protocol):
    """Renders one output frame (BGR uint8, output size) per call. `uses_driver_pixels` is
    True only for a generator configured to read the driver's own pixels (its mouth, or its
    skin's wrinkles); only then does the pipeline pass `driver`."""

    uses_driver_pixels: bool

    def render(self, motion: Motion, driver: DriverView | None = None) -> np.ndarray: ...


@runtime_checkable
class DeviceGenerator(Generator, Protocol):
    """A generator that can leave its frame on its device, for the GPU frame loop to read
    back while the next frame is worked on."""

    device: torch.device

    def render_tensor(self, motion: Motion, driver: DriverView | None = None) -> torch.Tensor: ...


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale `image` to fit width x height keeping its aspect ratio; pad with bars."""
    src_h, src_w = image.shape[:2]
    scale = min(width / src_w, height / src_h)
    new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    out = np.empty((height, width, 3), np.uint8)
    out[:] = LETTERBOX_BGR
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out
