"""Generator stage: makes the output frame from the avatar and the driver's motion.

Backends are picked by `generator.type`; every backend renders at the output size from the
motion alone: it never receives, returns or blends in a camera frame.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np

from daemon.avatar import load_avatar
from daemon.config import Config, MeshGeneratorConfig, StillGeneratorConfig
from daemon.frames import DriverView
from daemon.motion import Motion

LETTERBOX_BGR = (0, 0, 0)


class Generator(Protocol):
    """Renders one output frame (BGR uint8, output size) per call. `uses_driver_pixels` is
    True only for a generator configured to show some of the driver's own pixels; only then
    does the pipeline pass `driver`."""

    uses_driver_pixels: bool

    def render(self, motion: Motion, driver: DriverView | None = None) -> np.ndarray: ...


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


class StillGenerator:
    """The avatar image itself, scaled and letterboxed: what is published until motion exists."""

    def __init__(self, config: StillGeneratorConfig, avatar: np.ndarray, width: int, height: int):
        self._frame = letterbox(avatar, width, height)
        self._frame.setflags(write=False)

    uses_driver_pixels = False

    def render(self, motion: Motion, driver: DriverView | None = None) -> np.ndarray:
        return self._frame


def build_generator(config: Config, avatar: str | None = None, engine: str = "cpu") -> Generator:
    """The configured generator for `avatar` (default: config.avatar.image) on the chosen
    engines (engines.select: the mesh generator's pixel work runs in torch on the GPU for
    cuda and tensorrt). Raises AvatarError when the avatar cannot be read or prepared."""
    spec = config.avatar.image if avatar is None else avatar
    out = config.output
    if isinstance(config.generator, MeshGeneratorConfig):
        from daemon.avatar_prep import prepare_avatar

        prepared = prepare_avatar(spec)
        if engine != "cpu":
            from engines.torch_generator import TorchMeshGenerator

            return TorchMeshGenerator(config.generator, prepared, out.width, out.height, "cuda")
        from daemon.mesh_generator import MeshGenerator

        return MeshGenerator(config.generator, prepared, out.width, out.height)
    return StillGenerator(config.generator, load_avatar(spec), out.width, out.height)
