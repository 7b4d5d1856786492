"""The still generator (`generator.type: still`): the avatar image itself, unanimated."""

from __future__ import annotations

import numpy as np

from engines.generator.config import StillGeneratorConfig
from engines.generator.interface import DriverView, letterbox
from engines.motion.estimator import Motion


class StillGenerator:
    """The avatar image itself, scaled and letterboxed: what is published until motion exists."""

    def __init__(self, config: StillGeneratorConfig, avatar: np.ndarray, width: int, height: int):
        self._frame = letterbox(avatar, width, height)
        self._frame.setflags(write=False)

    uses_driver_pixels = False

    def render(self, motion: Motion, driver: DriverView | None = None) -> np.ndarray:
        return self._frame
