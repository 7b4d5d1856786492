"""Offline rendering through the same pipeline code the daemon uses: `render` and `demo`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from daemon.capture import VideoFileReader
from daemon.config import Config, FileSinkConfig, MediaPipeTrackingConfig
from daemon.demo import scripted_motion
from daemon.errors import CaptureError
from daemon.frames import CapturedFrame
from daemon.pipeline import Pipeline, build_pipeline, make_generator
from daemon.sinks import FileSink
from daemon.stats import RollingStats
from engines.generator.avatar import load_avatar
from engines.landmarks.mediapipe_cpu import MediaPipeLandmarks
from engines.progress import progress

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


def at_avatar_size(config: Config) -> Config:
    """The output at the avatar's own size (an odd side one pixel short: video sizes are
    even), where the generator draws one output pixel per avatar pixel: `render` without
    --width/--height gives a portrait back the way it came."""
    height, width = load_avatar(config.avatar.image).shape[:2]
    size = {"width": max(16, width - width % 2), "height": max(16, height - height % 2)}
    return config.model_copy(update={"output": config.output.model_copy(update=size)})


def render_video(
    config: Config, driver: str, out: Path, neutral_frame: int = 0, side_by_side: bool = False
) -> RenderResult:
    """Exactly one output frame per driver frame, at the driver's frame rate. The neutral face
    is the first tracked frame, or frame `neutral_frame` (0-based) of the driver. With
    `side_by_side` the driver video is shown left of the avatar (a demo: it shows the driver's
    face, which the live daemon never publishes)."""
    reader = VideoFileReader(driver, "--driver")
    config = _with_fps(config, reader.fps or FALLBACK_FPS)
    pipeline = build_pipeline(config, RollingStats())
    out_config = _side_by_side_config(config, reader) if side_by_side else config
    try:
        if neutral_frame:
            _set_neutral_from_frame(pipeline, driver, neutral_frame)
        else:
            pipeline.calibrate()
        sink = _open_file_sink(out_config, out)
    except BaseException:
        reader.close()
        pipeline.close()
        raise
    frames = 0
    try:
        with progress(reader.frame_count, "render") as bar:
            while (image := reader.read()) is not None:
                t = frames / config.output.fps
                frame = pipeline.process(CapturedFrame(image, t, frames), t)
                if side_by_side:
                    frame = _beside(image, frame, out_config.output.width)
                sink.write(frame)
                frames += 1
                bar.update()
    finally:
        reader.close()
        sink.close()
        pipeline.close()
    size = out_config.output
    return RenderResult(out, frames, size.fps, size.width, size.height)


def _side_by_side_config(config: Config, reader: VideoFileReader) -> Config:
    """The output widened by the driver scaled to the output's height (even width)."""
    driver_w, driver_h = reader.size
    left = round(driver_w * config.output.height / driver_h / 2) * 2
    wide = config.output.model_copy(update={"width": config.output.width + left})
    return config.model_copy(update={"output": wide})


def _beside(driver: np.ndarray, avatar: np.ndarray, width: int) -> np.ndarray:
    height = avatar.shape[0]
    left = cv2.resize(driver, (width - avatar.shape[1], height), interpolation=cv2.INTER_AREA)
    return np.hstack([left, avatar])


def _set_neutral_from_frame(pipeline: Pipeline, driver: str, index: int) -> None:
    reader = VideoFileReader(driver, "--driver")
    try:
        for _ in range(index):
            if reader.read() is None:
                break
        image = reader.read()
    finally:
        reader.close()
    if image is None:
        raise CaptureError(f"--neutral-frame {index}: {driver} has fewer frames than that")
    detector = MediaPipeLandmarks(MediaPipeTrackingConfig(), static_images=True)
    try:
        landmarks = detector.detect(image, 0.0, index)
    finally:
        detector.close()
    if landmarks is None or pipeline.estimator is None:
        raise CaptureError(f"--neutral-frame {index}: no face found in that frame of {driver}")
    pipeline.estimator.set_neutral(landmarks.points, explicit=True)


def render_demo(config: Config, out: Path, seconds: float) -> RenderResult:
    """The avatar performing the built-in script (talk, blink, nod, look around), with no
    camera at all: `make demo` on any machine."""
    generator = make_generator(config)
    sink = _open_file_sink(config, out)
    frames = round(seconds * config.output.fps)
    try:
        with progress(frames, "demo") as bar:
            for index in range(frames):
                sink.write(generator.render(scripted_motion(index / config.output.fps)))
                bar.update()
    finally:
        sink.close()
    return RenderResult(out, frames, config.output.fps, config.output.width, config.output.height)
