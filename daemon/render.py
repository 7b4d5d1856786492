"""Offline rendering through the same pipeline code the daemon uses: `render` and `demo`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from daemon.capture import VideoFileReader
from daemon.config import Config, FileSinkConfig
from daemon.frames import CapturedFrame
from daemon.service import build_pipeline
from daemon.sinks import FileSink
from daemon.stats import RollingStats

log = logging.getLogger(__name__)

FALLBACK_FPS = 30.0


@dataclass(frozen=True, slots=True)
class RenderResult:
    path: Path
    frames: int
    fps: float
    width: int
    height: int

    def __str__(self) -> str:
        return (
            f"wrote {self.path} ({self.frames} frames, {self.width}x{self.height} "
            f"@ {self.fps:g} fps)"
        )


def _with_fps(config: Config, fps: float) -> Config:
    return config.model_copy(update={"output": config.output.model_copy(update={"fps": fps})})


def _open_file_sink(config: Config, out: Path) -> FileSink:
    sink = FileSink(FileSinkConfig(type="file", path=str(out)), config.output)
    sink.open()
    return sink


def render_video(config: Config, driver: str, out: Path) -> RenderResult:
    """Exactly one output frame per driver frame, at the driver's frame rate."""
    reader = VideoFileReader(driver)
    config = _with_fps(config, reader.fps or FALLBACK_FPS)
    pipeline = build_pipeline(config, RollingStats())
    sink = _open_file_sink(config, out)
    frames = 0
    try:
        while (image := reader.read()) is not None:
            driver_frame = CapturedFrame(image, frames / config.output.fps, frames)
            sink.write(pipeline.process(driver_frame))
            frames += 1
    finally:
        reader.close()
        sink.close()
    return RenderResult(out, frames, config.output.fps, config.output.width, config.output.height)


def render_demo(config: Config, out: Path, seconds: float) -> RenderResult:
    """The avatar with no camera at all (idle input), for `make demo` on any machine."""
    pipeline = build_pipeline(config, RollingStats())
    sink = _open_file_sink(config, out)
    frames = round(seconds * config.output.fps)
    try:
        for _ in range(frames):
            sink.write(pipeline.process(None))
    finally:
        sink.close()
    return RenderResult(out, frames, config.output.fps, config.output.width, config.output.height)
