"""`talking-head-cam bench`: per-stage latency and loop rate of the current pipeline.

Speed is measured here, never asserted by timed tests. The driver is a video file made from
the default avatar (decoded for real), the output goes through the same pixel-format
conversion the virtual camera does, plus an MP4 encode.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from daemon.avatar import load_avatar
from daemon.capture import VideoFileReader
from daemon.config import Config, FileSinkConfig
from daemon.frames import CapturedFrame
from daemon.service import build_pipeline
from daemon.sinks import FileSink, bgr_to_i420, bgr_to_yuyv
from daemon.stats import RollingStats


@dataclass(frozen=True, slots=True)
class BenchResult:
    frames: int
    loop_fps: float
    stats: RollingStats

    def report(self, config: Config) -> str:
        out = config.output
        return (
            f"pipeline at {out.width}x{out.height}, {self.frames} frames, unpaced\n"
            f"{self.stats.format_table()}\nloop fps (unpaced, whole pipeline): "
            f"{self.loop_fps:.1f}"
        )


def make_driver_clip(path: Path, frames: int, width: int = 640, height: int = 480) -> Path:
    """A camera-like clip: the default avatar drifting slowly across the frame."""
    avatar = cv2.resize(load_avatar("default"), (width, height))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 30, (width, height))
    for i in range(frames):
        shift = np.float32([[1, 0, 20 * np.sin(i / 15)], [0, 1, 10 * np.cos(i / 20)]])
        writer.write(cv2.warpAffine(avatar, shift, (width, height), borderMode=cv2.BORDER_REFLECT))
    writer.release()
    return path


def _timed(stats: RollingStats, stage: str, fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    stats.record(stage, (time.perf_counter() - start) * 1e3)
    return result


def run_bench(config: Config, frames: int = 300) -> BenchResult:
    stats = RollingStats(window=frames)
    pipeline = build_pipeline(config, stats)
    with tempfile.TemporaryDirectory(prefix="thc-bench-") as tmp:
        reader = VideoFileReader(str(make_driver_clip(Path(tmp) / "driver.mp4", frames)))
        sink = FileSink(FileSinkConfig(type="file", path=str(Path(tmp) / "out.mp4")), config.output)
        sink.open()
        start = time.perf_counter()
        for index in range(frames):
            image = _timed(stats, "capture_decode", reader.read)
            if image is None:
                break
            now = time.monotonic()
            out = pipeline.process(CapturedFrame(image, now, index), now)
            _timed(stats, "sink:virtualcam I420", bgr_to_i420, out)
            _timed(stats, "sink:virtualcam YUYV", bgr_to_yuyv, out)
            _timed(stats, "sink:file mp4v", sink.write, out)
            stats.frame_published(time.monotonic())
        elapsed = time.perf_counter() - start
        reader.close()
        sink.close()
        pipeline.close()
    return BenchResult(frames, frames / elapsed, stats)
