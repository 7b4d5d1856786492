"""Host side of the e2e tests: the camera clip and config the guest's daemon gets, and what a
reader in the guest captured (format, frames, timestamps), judged against the avatar."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from conftest import SHARED_DATA, expected_still, mean_abs_diff, read_video, write_video

from engines.generator.avatar import load_avatar
from engines.generator.interface import letterbox

WIDTH, HEIGHT, FPS = 320, 240, 15  # small: the guest is emulated (no KVM)
CAMERA_FPS = 1
FFMPEG_PIX_FMT = {"I420": "yuv420p", "YUYV": "yuyv422"}
V4L2_FOURCC = {"I420": "YU12", "YUYV": "YUYV"}
DRIVING_CLIP = SHARED_DATA / "driving" / "talk_c.mp4"
# Mean absolute difference (0-255) of a captured frame from the expected avatar frame: the
# pixel-format round trip (4:2:0 or 4:2:2 chroma, ffmpeg's scaler) costs a few levels; the
# camera's face is far above that.
AVATAR_MAX_DIFF = 6.0
CAMERA_MIN_DIFF = 30.0
# v4l2loopback's buffers (max_buffers, 2 unless the module is told otherwise). A reader's
# VIDIOC_REQBUFS stamps every buffer anew (0.12's init_buffers), so up to this many frames
# written before the reader asked for buffers reach it with the request's time instead of
# their write's: microseconds apart, in buffer order rather than frame order.
LOOPBACK_BUFFERS = 2


def camera_clip(dest: Path, fallback_face: np.ndarray) -> Path:
    """What the daemon's "camera" shows: a real person talking (a dev clip, when
    ../shared/data is there), else another face drifting (letterboxed, so it is tracked
    too). Never the avatar.

    One frame a second: under emulation the daemon's face tracking takes ~0.5 s a frame,
    which at a real camera's rate would leave no time to publish."""
    if not DRIVING_CLIP.is_file():
        size = (WIDTH, HEIGHT)
        face = letterbox(fallback_face, WIDTH, HEIGHT)
        return write_video(dest, face, frames=6, fps=CAMERA_FPS, size=size)
    frames, fps = read_video(DRIVING_CLIP)
    writer = cv2.VideoWriter(
        str(dest), cv2.VideoWriter.fourcc(*"mp4v"), CAMERA_FPS, (WIDTH, HEIGHT)
    )
    for frame in frames[:: max(1, round(fps / CAMERA_FPS))]:
        writer.write(letterbox(frame, WIDTH, HEIGHT))  # squashed, the face is not found
    writer.release()
    return dest


def daemon_config(camera: str, pixel_format: str) -> str:
    """A real config: a video file as the camera, the `still` generator (its output is known
    exactly: the avatar letterboxed), our virtual camera found by its label (device: auto)."""
    return (
        f"capture: {{source: {camera}}}\n"
        f"output: {{width: {WIDTH}, height: {HEIGHT}, fps: {FPS}}}\n"
        "generator: {type: still}\n"
        f"sinks:\n  - {{type: virtualcam, device: auto, pixel_format: {pixel_format}}}\n"
    )


@dataclass(frozen=True)
class Capture:
    """What ffmpeg read from the device: the stream format, each frame's buffer timestamp,
    and the frames (converted to BGR by ffmpeg, as a player reading the device would)."""

    codec_tag: str  # the V4L2 fourcc as ffmpeg names it (I420, YUY2)
    pix_fmt: str  # yuv420p, yuyv422
    size: tuple[int, int]
    fps: float  # the rate the device announces
    pts_s: tuple[float, ...]  # each frame's buffer timestamp (to the microsecond)
    frames: tuple[np.ndarray, ...]

    @property
    def write_times_s(self) -> tuple[float, ...]:
        """The timestamps that are the writer's: all but the first LOOPBACK_BUFFERS, which
        may be the reader's buffer request instead."""
        return self.pts_s[LOOPBACK_BUFFERS:]

    @property
    def mean_fps(self) -> float:
        """Frames per second over the capture (its write times)."""
        times = self.write_times_s
        span = times[-1] - times[0] if times else 0.0
        return (len(times) - 1) / span if span > 0 else 0.0

    def paced_fps(self, nominal_fps: float) -> float:
        """The rate between stalls: one over the median frame interval, of the intervals
        shorter than two nominal periods (under emulation, tracking a camera frame stalls
        the frame loop for 0.5-1 s). 0 when there are too few of them to tell."""
        intervals = np.diff(self.write_times_s)
        unstalled = intervals[intervals < 2 / nominal_fps]
        return 1.0 / float(np.median(unstalled)) if len(unstalled) >= 5 else 0.0


_STREAM_RE = re.compile(
    r"Stream #0:0: Video: rawvideo \((\w+) / 0x[0-9a-f]+\), (\w+), (\d+)x(\d+).*?, ([\d.]+) fps"
)
_TIME_BASE_RE = re.compile(r"Stream #0:0: Video: rawvideo .*?, (\d+)(k?) tbn")
# -debug_ts: pkt_pts in the stream's time base (pkt_pts_time is rounded to milliseconds)
_DEMUXED_RE = re.compile(r"^demuxer -> .*? pkt_pts:(\d+) pkt_pts_time:", re.M)


def load_capture(share: Path, name: str) -> Capture:
    """The capture NAME the guest wrote to `share` (see guest_tools.capture)."""
    log = (share / f"{name}.ffmpeg.log").read_text(errors="replace")
    stream = _STREAM_RE.search(log)
    assert stream is not None, f"no input stream in {name}.ffmpeg.log:\n{log[-2000:]}"
    tag, pix_fmt, width, height, fps = stream.groups()
    size = (int(width), int(height))
    frames = to_bgr(share / f"{name}.raw", pix_fmt, size)
    base = _TIME_BASE_RE.search(log)
    assert base is not None, f"no time base in {name}.ffmpeg.log:\n{log[-2000:]}"
    ticks_per_s = int(base[1]) * (1000 if base[2] else 1)
    pts = tuple(int(t) / ticks_per_s for t in _DEMUXED_RE.findall(log))
    return Capture(tag, pix_fmt, size, float(fps), pts, tuple(frames))


def to_bgr(raw: Path, pix_fmt: str, size: tuple[int, int]) -> np.ndarray:
    """Raw frames in `pix_fmt` → BGR frames, converted by ffmpeg (not by our own code)."""
    argv = ["ffmpeg", "-v", "error", "-f", "rawvideo", "-pix_fmt", pix_fmt]
    argv += ["-s", f"{size[0]}x{size[1]}", "-i", str(raw), "-f", "rawvideo", "-pix_fmt", "bgr24"]
    done = subprocess.run([*argv, "-"], capture_output=True, check=True, timeout=60)
    return np.frombuffer(done.stdout, np.uint8).reshape(-1, size[1], size[0], 3)


def avatar_frame() -> np.ndarray:
    """What the daemon must publish with the still generator: the default avatar letterboxed."""
    return expected_still(load_avatar("default"), WIDTH, HEIGHT)


def camera_frames(clip: Path) -> list[np.ndarray]:
    return read_video(clip)[0]


def assert_shows_the_avatar(
    frames: Sequence[np.ndarray], avatar: np.ndarray, camera: list[np.ndarray]
) -> None:
    """Every frame a reader got (ffmpeg's capture, or what Chromium drew) is the avatar; none
    is (close to) any frame of the camera clip."""
    assert len(frames), "no frames were read from the device"
    for index, frame in enumerate(frames):
        diff = mean_abs_diff(frame, avatar)
        assert diff < AVATAR_MAX_DIFF, f"frame {index} is not the avatar (differs by {diff:.1f})"
        nearest = min(mean_abs_diff(frame, c) for c in camera)
        assert nearest > CAMERA_MIN_DIFF, f"frame {index} is the camera image ({nearest:.1f})"
