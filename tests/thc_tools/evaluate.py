"""Evaluation harness: how faithfully the published video follows the driver, measured on
the output itself.

`talking-head-cam eval --avatar IMG --driver VIDEO [--json]` renders the driver through the
daemon's own pipeline (`build_pipeline`, so swapping the generator changes the numbers and
nothing here), re-tracks the output frames in memory with the same landmark model, and
compares per-frame signals with the driver's. Every number is also given for a static-avatar
baseline (the avatar letterboxed, repeated), so each number has a reference.
`python -m thc_tools.evaluate` (`make eval`) runs every dev clip × a few avatars and writes
reports/eval.md with plots.

Tracking: FaceMesh, tracking mode, refined (478 points), max_faces=1, redetect_s=0, a fresh
detector per sequence; points pixel-scaled (x·w, y·h, z·w). Per sequence the reference is
its first tracked frame; an Umeyama fit of facegeom.RIGID maps reference → current, giving
yaw/pitch/roll, and inverting it pose-normalises the current points. Metrics (output frame i
against driver frame i, over frames tracked in both):

- tracked: fraction of output frames with a face.
- pose_err_deg: mean |driver − output| over frame pairs and the three angles.
- mouth_r, gaze_r: Pearson r of facegeom.mouth_opening / gaze_horizontal (0.0 when either
  series is constant).
- blink_f1: blinks are runs of eye openness below 0.55 × the sequence's median, placed at the
  run's middle frame; events match one-to-one within ±2 frames; null when the driver never
  blinks. Runs at most 0.1 s apart are one blink (the tracker reading a shut lid a little
  open for a frame is no reopening). A driver run longer than 0.3 s is a squeeze (eyes
  screwed shut), not a blink: it counts neither way (no driver event, and output events
  within ±2 frames of it are dropped).
- jitter_px: the driver's first frame repeated 30 times through the pipeline, re-tracked;
  mean 2D displacement per landmark between consecutive output frames, output pixels.

JSON (`--json`): {"clip", "avatar", "generator", "width", "height", "fps",
"frames": {"driver", "driver_tracked", "output", "still"}, "pipeline": METRICS,
"baseline": METRICS}, METRICS = {"tracked", "pose_err_deg", "mouth_r", "blink_f1", "gaze_r",
"jitter_px"} (null where undefined).
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import cv2
import numpy as np

from daemon.capture import VideoFileReader
from daemon.config import (
    Config,
    MediaPipeTrackingConfig,
    find_config_path,
    load_config,
    validate_config,
)
from daemon.errors import CaptureError, TalkingHeadCamError
from daemon.frames import CapturedFrame
from daemon.pipeline import build_pipeline
from daemon.stats import RollingStats
from engines.facegeom import (
    RIGID,
    eye_distance,
    eye_openness,
    fit_pose,
    gaze_horizontal,
    mouth_opening,
    rotation_to_angles,
)
from engines.generator.avatar import load_avatar
from engines.generator.avatar_prep import face_hull_mask, prepare_avatar
from engines.generator.interface import letterbox
from engines.landmarks.mediapipe_cpu import MediaPipeLandmarks
from engines.progress import progress

EVAL_WIDTH, EVAL_HEIGHT = 512, 512
FALLBACK_FPS = 30.0
STILL_FRAMES = 30  # the still driver: the clip's first frame, this many times
BLINK_RATIO = 0.55  # a blink: openness below this × the sequence's median
BLINK_TOLERANCE = 2  # frames either way for a blink to match
# Eyes held below the blink threshold longer than this are screwed shut (a squeeze, a
# grimace), not blinking: a blink's closed phase lasts 0.05–0.2 s (every blink in the dev
# clips), the grin clip's squeezes 0.33–0.42 s.
SQUEEZE_S = 0.3
BRIDGE_S = 0.1  # low runs this close are one blink (2 frames at 25 fps, 1 at 12)
DEFAULT_AVATARS = (  # every photo (the targets are stated on photos), a painting, a drawing
    "photo_man_smiling.png",
    "photo_older_man.png",
    "photo_woman_a.png",
    "photo_woman_bun.png",
    "photo_woman_neutral.png",
    "photo_woman_smiling.png",
    "photo_woman_white_top.png",
    "painting_1.png",
    "anime_3.png",
)
HEAD_GROW = 1.7  # the head region: the face's hull grown this much (hair, ears, neck)
PERSON_GROW = 0.15  # the person region's margin, in eye distances (its soft, resampled edge)
METRIC_NAMES = ("tracked", "pose_err_deg", "mouth_r", "blink_f1", "gaze_r", "jitter_px")
# The generator's targets: reported by `make eval` (targets_summary) and gating the build on
# short sequences (tests/test_eval_targets.py).
TARGET_MOUTH_R = 0.85  # mean mouth_r
TARGET_BLINK_F1 = 0.8  # on clips made for blinks
TARGET_POSE_RATIO = 0.40  # pose_err_deg as a share of the static baseline's
TARGET_TRACKED = 0.98  # output frames with a face


# ---------------------------------------------------------------- tracking and signals


def tracking_config() -> MediaPipeTrackingConfig:
    """One face, never re-detected on a timer: the same track on any machine speed."""
    return MediaPipeTrackingConfig(max_faces=1, redetect_s=0)


def track(frames: Iterable[np.ndarray]) -> list[np.ndarray | None]:
    """(478, 3) pixel-scaled points per frame (None: no face), with a fresh detector."""
    detector = MediaPipeLandmarks(tracking_config())
    try:
        points = []
        for index, image in enumerate(frames):
            landmarks = detector.detect(image, float(index), index)
            points.append(None if landmarks is None else landmarks.points.astype(np.float64))
        return points
    finally:
        detector.close()


def has_face(image: np.ndarray) -> bool:
    """Whether FaceMesh finds a face in one still image."""
    detector = MediaPipeLandmarks(tracking_config(), static_images=True)
    try:
        return detector.detect(image, 0.0, 0) is not None
    finally:
        detector.close()


@dataclass(frozen=True, slots=True)
class Signals:
    """Per-frame measurements of one sequence; NaN where no face was tracked."""

    points: tuple[np.ndarray | None, ...]
    angles: np.ndarray  # (n, 3) yaw, pitch, roll in degrees, against the first tracked frame
    mouth: np.ndarray
    eyes: np.ndarray
    gaze: np.ndarray

    @classmethod
    def measure(cls, points: Sequence[np.ndarray | None]) -> Signals:
        n = len(points)
        angles = np.full((n, 3), np.nan)
        mouth, eyes, gaze = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        reference = next((p for p in points if p is not None), None)
        for i, current in enumerate(points):
            if current is None:
                continue
            fit = fit_pose(reference, current)
            angles[i] = rotation_to_angles(fit.rotation)
            normalised = fit.invert(current)
            mouth[i] = mouth_opening(normalised)
            eyes[i] = eye_openness(normalised)
            gaze[i] = gaze_horizontal(normalised)
        return cls(tuple(points), angles, mouth, eyes, gaze)

    @property
    def tracked(self) -> np.ndarray:
        return np.array([p is not None for p in self.points], bool)

    def __len__(self) -> int:
        return len(self.points)


# ---------------------------------------------------------------- metrics


def _constant(values: np.ndarray) -> bool:
    return bool(np.std(values) <= 1e-12 * max(1.0, float(np.abs(values).max())))


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson r; 0.0 when either series is constant, None when there are no values."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) == 0:
        return None
    if _constant(x) or _constant(y):
        return 0.0
    return float(np.clip(np.corrcoef(x, y)[0, 1], -1.0, 1.0))


def low_runs(
    openness: Sequence[float], ratio: float = BLINK_RATIO, bridge: int = 0
) -> list[tuple[int, int]]:
    """(first, last) frame of each run of frames whose openness is below `ratio` × the median
    over tracked frames; untracked frames (NaN) end a run; runs apart by at most `bridge`
    tracked frames are one."""
    values = np.asarray(openness, np.float64)
    valid = ~np.isnan(values)
    if not valid.any():
        return []
    below = np.zeros(len(values), bool)
    below[valid] = values[valid] < ratio * np.median(values[valid])
    runs: list[tuple[int, int]] = []
    start = None
    for i, low in enumerate([*below.tolist(), False]):
        if low and start is None:
            start = i
        elif not low and start is not None:
            if runs and _bridgeable(runs[-1][1], start, bridge, valid):
                runs[-1] = (runs[-1][0], i - 1)
            else:
                runs.append((start, i - 1))
            start = None
    return runs


def _bridgeable(end: int, start: int, bridge: int, valid: np.ndarray) -> bool:
    """Whether a run ending at `end` and one starting at `start` are one: at most `bridge`
    frames apart, all of them tracked."""
    return start - end - 1 <= bridge and bool(valid[end:start].all())


def blink_events(
    openness: Sequence[float],
    ratio: float = BLINK_RATIO,
    fps: float | None = None,
    keep_squeezes: bool = False,
) -> list[int]:
    """Middle frame (the lower one of an even run) of each low run (see low_runs). Given
    `fps`, runs apart by at most BRIDGE_S are one blink (the tracker reading a shut eye a
    little open for a frame is no reopening: a lid cannot open and close again that fast),
    and runs longer than SQUEEZE_S are squeezes, not blinks, left out unless kept."""
    if fps is None:
        return [(first + last) // 2 for first, last in low_runs(openness, ratio)]
    return [
        (first + last) // 2
        for first, last in low_runs(openness, ratio, _bridge(fps))
        if keep_squeezes or not _is_squeeze(first, last, fps)
    ]


def squeezes(openness: Sequence[float], fps: float) -> list[tuple[int, int]]:
    """(first, last) frame of each run held below the blink threshold longer than a blink."""
    return [run for run in low_runs(openness, bridge=_bridge(fps)) if _is_squeeze(*run, fps)]


def _bridge(fps: float) -> int:
    return int(BRIDGE_S * fps + 1e-9)


def _is_squeeze(first: int, last: int, fps: float) -> bool:
    return (last - first + 1) / fps > SQUEEZE_S


def outside(
    events: Sequence[int], windows: Sequence[tuple[int, int]], tolerance: int = BLINK_TOLERANCE
) -> list[int]:
    """The events not within `tolerance` frames of any window."""
    return [e for e in events if all(e < a - tolerance or e > b + tolerance for a, b in windows)]


def match_events(
    reference: Sequence[int], found: Sequence[int], tolerance: int = BLINK_TOLERANCE
) -> int:
    """Most one-to-one pairs with |reference − found| ≤ tolerance (greedy in time order,
    which is optimal for windows of equal width)."""
    found = sorted(found)
    matched = j = 0
    for event in sorted(reference):
        while j < len(found) and found[j] < event - tolerance:
            j += 1
        if j < len(found) and found[j] <= event + tolerance:
            matched += 1
            j += 1
    return matched


def blink_f1(reference: Sequence[int], found: Sequence[int]) -> float | None:
    """F1 of `found` blink events against `reference`; None when reference has none."""
    if not reference:
        return None
    return 2 * match_events(reference, found) / (len(reference) + len(found))


def blink_f1_of(
    driver_eyes: Sequence[float], output_eyes: Sequence[float], fps: float | None
) -> float | None:
    """blink_f1 of the output's blinks against the driver's, a driver's squeeze counting
    neither way (see the module doc)."""
    if fps is None:
        return blink_f1(blink_events(driver_eyes), blink_events(output_eyes))
    found = blink_events(output_eyes, fps=fps, keep_squeezes=True)
    return blink_f1(blink_events(driver_eyes, fps=fps), outside(found, squeezes(driver_eyes, fps)))


def jitter_px(points: Sequence[np.ndarray | None]) -> float | None:
    """Mean 2D displacement per landmark between consecutive tracked frames, pixels."""
    steps = [
        float(np.linalg.norm(b[:, :2] - a[:, :2], axis=1).mean())
        for a, b in itertools.pairwise(points)
        if a is not None and b is not None
    ]
    return float(np.mean(steps)) if steps else None


@dataclass(frozen=True, slots=True)
class Metrics:
    """One output sequence scored against its driver (None: undefined, see the module doc)."""

    tracked: float
    pose_err_deg: float | None
    mouth_r: float | None
    blink_f1: float | None
    gaze_r: float | None
    jitter_px: float | None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def score(
    driver: Signals,
    output: Signals,
    still_output: Sequence[np.ndarray | None],
    fps: float | None = None,
) -> Metrics:
    """Output frame i against driver frame i; `still_output` is the re-tracked output for the
    still driver (for jitter); `fps` tells squeezes from blinks (None: every run a blink)."""
    n = min(len(driver), len(output))
    both = driver.tracked[:n] & output.tracked[:n]
    pose_diff = np.abs(driver.angles[:n][both] - output.angles[:n][both])
    return Metrics(
        tracked=float(output.tracked[:n].mean()) if n else 0.0,
        pose_err_deg=float(pose_diff.mean()) if both.any() else None,
        mouth_r=pearson(driver.mouth[:n][both], output.mouth[:n][both]),
        blink_f1=blink_f1_of(driver.eyes[:n], output.eyes[:n], fps),
        gaze_r=pearson(driver.gaze[:n][both], output.gaze[:n][both]),
        jitter_px=jitter_px(still_output),
    )


def compare(
    driver: Signals,
    output_frames: Iterable[np.ndarray],
    still_output_frames: Iterable[np.ndarray],
    fps: float | None = None,
) -> tuple[Signals, Metrics]:
    """Re-track an output sequence (and the output for the still driver) and score it."""
    output = Signals.measure(track(output_frames))
    return output, score(driver, output, track(still_output_frames), fps)


def person_region(
    shape: tuple[int, ...],
    points: Sequence[np.ndarray | None],
    avatar_points: np.ndarray | None = None,
    person: np.ndarray | None = None,
) -> np.ndarray:
    """Where the person may be in any output frame (bool): the union over all frames of the
    re-tracked face's hull grown by HEAD_GROW (the head's own turns take hair and neck with
    them) and, given the avatar's landmarks and person mask, that mask (its faintest alpha
    counts) carried by the head's translation and scale in each frame (the avatar's face fit
    onto the re-tracked one: the body comes along, easing off down the torso, so also half
    way), grown by PERSON_GROW eye distances."""
    region = np.zeros(shape[:2], np.uint8)
    tracked = [current for current in points if current is not None]
    for current in tracked:
        region |= face_hull_mask(current, region.shape, grow=HEAD_GROW)
    if avatar_points is None or person is None or not tracked:
        return region > 0
    anywhere = ((person > 0) * 255).astype(np.uint8)
    source_center = avatar_points[RIGID, :2].mean(0)
    source_unit = eye_distance(avatar_points)
    placements = []
    for current in tracked:
        scale = eye_distance(current) / source_unit
        offset = current[RIGID, :2].mean(0) - scale * source_center
        placements.append(np.array([scale, *offset]))
    first = placements[0]
    height, width = region.shape
    for placement in placements:
        for share in (0.5, 1.0):
            scale, dx, dy = first + share * (placement - first)
            matrix = np.float32([[scale, 0, dx], [0, scale, dy]])
            region |= cv2.warpAffine(anywhere, matrix, (width, height))
    grow = max(1, round(PERSON_GROW * eye_distance(tracked[0])))
    return cv2.dilate(region, np.ones((2 * grow + 1,) * 2, np.uint8)) > 0


def background_change(
    frames: Sequence[np.ndarray],
    points: Sequence[np.ndarray | None],
    avatar_points: np.ndarray | None = None,
    person: np.ndarray | None = None,
) -> tuple[float, float]:
    """(change, codec noise): the mean absolute change of the pixels outside the person (see
    person_region) against the first frame, and what one MP4 (mp4v) round trip of that first
    frame changes in the same pixels: the background is still when the first is below the
    second. Outside the person, not outside the head: the whole person moves when the driver
    leans in or slides sideways (issue 14, item 6), the plate behind it never; a generator
    that drags the plate along with the person changes pixels away from it and fails."""
    background = ~person_region(frames[0].shape, points, avatar_points, person)
    if not background.any():
        return 0.0, 0.0
    first = frames[0].astype(np.int16)
    change = (
        float(np.mean([np.abs(f.astype(np.int16) - first)[background].mean() for f in frames[1:]]))
        if len(frames) > 1
        else 0.0
    )
    with tempfile.TemporaryDirectory(prefix="thc-eval-") as tmp:
        path = str(Path(tmp) / "still.mp4")
        height, width = frames[0].shape[:2]
        writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*"mp4v"), 25, (width, height))
        for _ in range(3):
            writer.write(frames[0])
        writer.release()
        decoded = next(read_frames(path))
    noise = float(np.abs(decoded.astype(np.int16) - first)[background].mean())
    return change, noise


# ---------------------------------------------------------------- sequences


def read_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Every frame of a video file, decoded in order."""
    reader = VideoFileReader(str(path))
    try:
        while (image := reader.read()) is not None:
            yield image
    finally:
        reader.close()


def clip_info(path: str | Path) -> tuple[float, np.ndarray]:
    """(fps, first frame) of a driver clip."""
    reader = VideoFileReader(str(path))
    try:
        fps, first = reader.fps or FALLBACK_FPS, reader.read()
    finally:
        reader.close()
    if first is None:
        raise CaptureError(f"driver video {path} has no frames")
    return fps, first


def render(config: Config, frames: Iterable[np.ndarray], fps: float) -> Iterator[np.ndarray]:
    """The daemon's pipeline for `config`, one output frame per driver frame at `fps`; the
    neutral face is the first tracked frame."""
    pipeline = build_pipeline(config, RollingStats())
    try:
        pipeline.calibrate()
        for index, image in enumerate(frames):
            t = index / fps
            yield pipeline.process(CapturedFrame(image, t, index), t)
    finally:
        pipeline.close()


def _with_fps(config: Config, fps: float) -> Config:
    return config.model_copy(update={"output": config.output.model_copy(update={"fps": fps})})


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One clip × avatar: the driver, the pipeline's output and the static baseline."""

    clip: str
    avatar: str
    generator: str
    width: int
    height: int
    fps: float
    driver: Signals
    output: Signals
    baseline: Signals
    pipeline_metrics: Metrics
    baseline_metrics: Metrics
    background: tuple[float, float] = (0.0, 0.0)  # (change outside the person, codec noise)

    def as_dict(self) -> dict:
        return {
            "clip": self.clip,
            "avatar": self.avatar,
            "generator": self.generator,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "frames": {
                "driver": len(self.driver),
                "driver_tracked": int(self.driver.tracked.sum()),
                "output": len(self.output),
                "still": STILL_FRAMES,
            },
            "pipeline": self.pipeline_metrics.as_dict(),
            "baseline": self.baseline_metrics.as_dict(),
            "background": {"change": self.background[0], "codec_noise": self.background[1]},
        }

    def format_table(self) -> str:
        lines = [
            f"clip {self.clip}: {len(self.driver)} frames @ {self.fps:g} fps, "
            f"{int(self.driver.tracked.sum())} with a face",
            f"avatar {self.avatar}, {self.width}x{self.height}, generator {self.generator}",
            f"{'metric':<14}{'pipeline':>10}{'baseline':>10}",
        ]
        for name in METRIC_NAMES:
            a, b = getattr(self.pipeline_metrics, name), getattr(self.baseline_metrics, name)
            lines.append(f"{name:<14}{_fmt(a):>10}{_fmt(b):>10}")
        change, noise = self.background
        lines.append(
            f"background outside the person changes {change:.3f} (codec noise {noise:.3f})"
        )
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def evaluate(config: Config, driver_path: str | Path, driver: Signals | None = None) -> Evaluation:
    """Score the pipeline for `config` (avatar, output size, generator) and the static baseline
    on one driver clip; pass `driver` to reuse its signals across avatars."""
    fps, first = clip_info(driver_path)
    config = _with_fps(config, fps)
    avatar = load_avatar(config.avatar.image)
    if driver is None:
        driver = Signals.measure(track(read_frames(driver_path)))
    frames = list(render(config, read_frames(driver_path), fps))
    output, pipeline_metrics = compare(
        driver, frames, render(config, itertools.repeat(first, STILL_FRAMES), fps), fps
    )
    prepared = prepare_avatar(config.avatar.image)  # the pipeline's own, from the cache
    background = background_change(frames, output.points, prepared.points, prepared.person)
    still = letterbox(avatar, config.output.width, config.output.height)
    baseline, baseline_metrics = compare(
        driver, itertools.repeat(still, len(driver)), itertools.repeat(still, STILL_FRAMES), fps
    )
    return Evaluation(
        clip=str(driver_path),
        avatar=config.avatar.image,
        generator=config.generator.type,
        width=config.output.width,
        height=config.output.height,
        fps=fps,
        driver=driver,
        output=output,
        baseline=baseline,
        pipeline_metrics=pipeline_metrics,
        baseline_metrics=baseline_metrics,
        background=background,
    )


def evaluate_self(driver_path: str | Path, driver: Signals | None = None) -> Metrics:
    """The driver frames used as the output: checks the harness itself, must be perfect
    (pose_err 0, mouth_r 1, gaze_r 1, blink_f1 1 or None, tracked 1 where the driver is)."""
    fps, first = clip_info(driver_path)
    if driver is None:
        driver = Signals.measure(track(read_frames(driver_path)))
    _, metrics = compare(
        driver, read_frames(driver_path), itertools.repeat(first, STILL_FRAMES), fps
    )
    return metrics


# ---------------------------------------------------------------- report (make eval)


def eval_config(base: Config, avatar: str, width: int, height: int) -> Config:
    data = base.model_dump()
    data["avatar"]["image"] = avatar
    data["output"].update(width=width, height=height)
    return validate_config(data, "eval")


def plot_clip(path: Path, clip: str, driver: Signals, evaluations: Sequence[Evaluation]) -> None:
    """Driver vs each avatar's output: yaw, pitch, roll, mouth, eyes (+ blinks), gaze."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = [
        ("yaw °", lambda s: s.angles[:, 0]),
        ("pitch °", lambda s: s.angles[:, 1]),
        ("roll °", lambda s: s.angles[:, 2]),
        ("mouth", lambda s: s.mouth),
        ("eyes", lambda s: s.eyes),
        ("gaze", lambda s: s.gaze),
    ]
    fig, axes = plt.subplots(len(rows), 1, sharex=True, figsize=(8, 9))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    series = [("driver", driver, "black", 1.6)] + [
        (f"output: {Path(e.avatar).name}", e.output, colors[i % len(colors)], 1.0)
        for i, e in enumerate(evaluations)
    ]
    for ax, (label, get) in zip(axes, rows, strict=True):
        for name, signals, color, width in series:
            values = get(signals)
            ax.plot(values, color=color, lw=width, label=name)
            if label == "eyes":
                blinks = blink_events(values)
                ax.plot(blinks, values[blinks], "v", color=color, ms=6)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{clip}: driver vs output (▼ detected blinks)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, 0.96))
    axes[-1].set_xlabel("frame")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=80)
    plt.close(fig)
    # a 64-colour palette: a third of the bytes, since these files are committed
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(64).save(path, optimize=True)


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _pair(a: float | None, b: float | None) -> str:
    return f"{_fmt(a)} / {_fmt(b)}"


def targets_summary(evaluations: Sequence[Evaluation]) -> list[str]:
    """The generator's targets, on the photo avatars: mean mouth_r ≥ 0.85, blink_f1 ≥ 0.8
    where the driver blinks, pose_err ≤ 40% of the baseline on the head-turn clip, tracked
    ≥ 0.98, and a background that changes less than the codec does."""
    photos = [e for e in evaluations if Path(e.avatar).name.startswith("photo_")]
    if not photos:
        return []
    mouth = _mean(e.pipeline_metrics.mouth_r for e in photos)
    blinks = [
        e.pipeline_metrics.blink_f1 for e in photos if e.pipeline_metrics.blink_f1 is not None
    ]
    per_clip = {
        Path(e.clip).stem: _mean(x.pipeline_metrics.blink_f1 for x in photos if x.clip == e.clip)
        for e in photos
    }
    turns = [e for e in photos if Path(e.clip).stem == "talk_head_turns"]
    ratio = (
        _mean(e.pipeline_metrics.pose_err_deg for e in turns)
        / _mean(e.baseline_metrics.pose_err_deg for e in turns)
        if turns
        else None
    )
    tracked = min(e.pipeline_metrics.tracked for e in photos)
    still = sum(e.background[0] < e.background[1] for e in photos)
    return [
        f"**Targets, over the {len(photos)} clip × photo-avatar pairs:**",
        "",
        f"- mean mouth_r: **{_fmt(mouth)}** (target ≥ {TARGET_MOUTH_R})",
        "- mean blink_f1 on the clips made for blinks (talk_blinks_*): "
        f"**{_fmt(_mean(v for c, v in per_clip.items() if c.startswith('talk_blinks')))}** "
        f"(target ≥ {TARGET_BLINK_F1}); on every clip where the detector finds driver blinks "
        f"(squints and head turns included): {_fmt(_mean(blinks))}; per clip: "
        + ", ".join(f"{clip} {_fmt(v)}" for clip, v in per_clip.items()),
        f"- pose_err on talk_head_turns: **{_fmt(ratio)}** of the static baseline "
        f"(target ≤ {TARGET_POSE_RATIO:.2f})"
        if ratio is not None
        else "- pose_err: talk_head_turns not evaluated",
        f"- tracked, lowest: **{tracked:.3f}** (target ≥ {TARGET_TRACKED})",
        f"- background outside the person below the codec noise: **{still} of {len(photos)}** "
        "pairs",
    ]


def format_report(
    data_dir: str,
    evaluations: Sequence[Evaluation],
    self_checks: dict[str, Metrics],
    skipped: Sequence[str],
    plots: Sequence[str],
    seconds: float,
) -> str:
    first = evaluations[0] if evaluations else None
    head = "| clip | avatar | " + " | ".join(METRIC_NAMES) + " |"
    rule = "|" + " --- |" * (len(METRIC_NAMES) + 2)
    rows = [
        f"| {Path(e.clip).name} | {Path(e.avatar).name} | "
        + " | ".join(
            _pair(getattr(e.pipeline_metrics, m), getattr(e.baseline_metrics, m))
            for m in METRIC_NAMES
        )
        + " |"
        for e in evaluations
    ]
    mean = " | ".join(
        _pair(
            _mean(getattr(e.pipeline_metrics, m) for e in evaluations),
            _mean(getattr(e.baseline_metrics, m) for e in evaluations),
        )
        for m in METRIC_NAMES
    )
    rows.append(f"| **mean** | | {mean} |")
    checks = [
        f"| {clip} | " + " | ".join(_fmt(getattr(m, n)) for n in METRIC_NAMES) + " |"
        for clip, m in self_checks.items()
    ]
    setup = f"generator `{first.generator}`, output {first.width}x{first.height}, " if first else ""
    lines = [
        "# Evaluation: does the output follow the driver?",
        "",
        f"Generated by `make eval` (`python -m thc_tools.evaluate`) on {date.today()} in "
        f"{seconds:.0f} s: {setup}every clip in {data_dir}/driving × avatars.",
        "Each cell is **pipeline / static baseline** (the avatar image letterboxed, repeated).",
    ]
    if first and first.generator == "still":
        lines.append(
            "With the `still` generator the pipeline output *is* the static image, so both "
            "columns agree; that is expected."
        )
    lines += [
        "",
        *targets_summary(evaluations),
        "",
        head,
        rule,
        *rows,
        "",
        "Background outside the person (mean absolute change against the first frame, 0–255) "
        "next to what one MP4 round trip changes (codec noise): "
        + ", ".join(
            f"{Path(e.avatar).stem} × {Path(e.clip).stem} {e.background[0]:.2f} "
            f"(noise {e.background[1]:.2f})"
            for e in evaluations
            if Path(e.clip).stem == "talk_head_turns"
        )
        + ".",
        "",
        "Harness check, the driver scored against itself (must be perfect: tracked 1, "
        "pose_err 0, mouth_r 1, blink_f1 1 or n/a, gaze_r 1; jitter is the tracker's own on "
        "a still frame):",
        "",
        "| clip | " + " | ".join(METRIC_NAMES) + " |",
        "|" + " --- |" * (len(METRIC_NAMES) + 1),
        *checks,
        "",
    ]
    if skipped:
        lines += ["Skipped (no face found in the avatar image): " + ", ".join(skipped), ""]
    else:
        lines += ["No avatar was skipped: FaceMesh found a face in each avatar image.", ""]
    lines += [
        "## How it is measured",
        "",
        "- The driver runs through the daemon's own pipeline (`build_pipeline`, neutral = "
        "first tracked frame); the output frames are re-tracked in memory. Output frame i is "
        "compared with driver frame i.",
        "- Landmarks: MediaPipe FaceMesh in tracking mode, refine_landmarks=True (478 points), "
        "max_faces=1, redetect_s=0, a fresh detector per sequence; points pixel-scaled "
        "(x·w, y·h, z·w).",
        "- Pose: per sequence the reference is its first tracked frame; an Umeyama similarity "
        "fit of the rigid landmarks maps reference → current; yaw/pitch/roll come from its "
        "rotation (R = Ry·Rx·Rz), and inverting the fit pose-normalises the points. Rigid "
        f"indices: {', '.join(map(str, RIGID.tolist()))}.",
        "- **tracked**: fraction of output frames with a face.",
        "- **pose_err_deg**: mean over frames tracked in both and the three angles of "
        "|driver − output|.",
        "- **mouth_r**: Pearson r of mouth opening |p13 − p14| / |p33 − p263|.",
        "- **blink_f1**: eye openness = mean of |p159 − p145| / |p33 − p133| and "
        "|p386 − p374| / |p362 − p263|; a blink is a run of frames below "
        f"{BLINK_RATIO} × the sequence's median openness, placed at its middle frame; events "
        f"match one-to-one within ±{BLINK_TOLERANCE} frames; n/a when the driver never blinks. "
        f"Runs at most {BRIDGE_S} s apart are one blink. "
        f"A driver run longer than {SQUEEZE_S} s is a squeeze (eyes screwed shut), not a "
        "blink: it counts neither way (output events within the tolerance of it are dropped).",
        "- **gaze_r**: Pearson r of the mean horizontal iris position (p468, p473) between "
        "each eye's corners.",
        "- **jitter_px**: the clip's first frame repeated "
        f"{STILL_FRAMES} times through the pipeline, output re-tracked: mean 2D displacement "
        "per landmark between consecutive frames, output pixels (the baseline's is the "
        "tracker's own noise on a still image).",
        "- Pearson r of a constant series is defined as 0.0 (the static baseline gives "
        "near-constant series; their r is tracker noise).",
        "- The pipeline tracks the driver with the daemon's tracking config (re-detection "
        "every 2 s on the frames' clock), so runs repeat exactly.",
        "",
        "## Plots",
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
    ]
    return "\n".join(lines)


def write_report(
    config: Config,
    data_dir: Path,
    out_dir: Path,
    avatars: Sequence[str] = DEFAULT_AVATARS,
    width: int = EVAL_WIDTH,
    height: int = EVAL_HEIGHT,
) -> Path:
    """Every clip of data_dir/driving × `avatars` → out_dir/eval.md and one PNG per clip."""
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    usable, skipped = [], []
    for name in avatars:
        path = data_dir / "avatars" / name
        if has_face(letterbox(load_avatar(str(path)), width, height)):
            usable.append(path)
        else:
            skipped.append(name)
            print(f"skipping avatar {name}: no face found in it")
    evaluations, self_checks, plots = [], {}, []
    clips = sorted((data_dir / "driving").glob("*.mp4"))
    with progress(len(clips) * (1 + len(usable)), "eval", unit="run") as bar:
        for clip in clips:
            bar.set_postfix_str(f"{clip.name}: tracking the driver", refresh=False)
            driver = Signals.measure(track(read_frames(clip)))
            self_checks[clip.name] = evaluate_self(clip, driver)
            bar.update()
            per_clip = []
            for avatar in usable:
                bar.set_postfix_str(f"{clip.name} × {avatar.name}", refresh=False)
                avatar_config = eval_config(config, str(avatar), width, height)
                per_clip.append(evaluate(avatar_config, clip, driver))
                bar.update()
            plot = f"eval_{clip.stem}.png"
            plot_clip(out_dir / plot, clip.name, driver, per_clip)
            plots.append(plot)
            evaluations += per_clip
    report = out_dir / "eval.md"
    seconds = time.monotonic() - started
    text = format_report(str(data_dir), evaluations, self_checks, skipped, plots, seconds)
    report.write_text(text)
    return report


def report_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every dev-data report takes (`make eval`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--data", default="../shared/data", help="dev data (default: %(default)s)")
    parser.add_argument("--out", default="reports", help="report folder (default: %(default)s)")
    parser.add_argument("--config", help="config file (default: the one `run` would use)")
    return parser


def run_report(name: str, args: argparse.Namespace, write: Callable[[Config, Path], Path]) -> int:
    """Write one dev-data report: skipped without the dev data, one line per error."""
    data = Path(args.data)
    if not (data / "driving").is_dir():
        print(f"skipped: dev data not found at {data.resolve()}")
        return 0
    from daemon.cli import setup_logging
    from daemon.native_stderr import filter_native_stderr

    filter_native_stderr()
    setup_logging("warning", progress_lines=True)
    try:
        report = write(load_config(find_config_path(args.config)), data)
    except TalkingHeadCamError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {report}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = report_parser(
        "python -m thc_tools.evaluate",
        "evaluate every dev clip × a few avatars; write a Markdown report + plots",
    )
    parser.add_argument("--avatar", action="append", help="avatar file name in DATA/avatars")
    parser.add_argument("--width", type=int, default=EVAL_WIDTH)
    parser.add_argument("--height", type=int, default=EVAL_HEIGHT)
    args = parser.parse_args(argv)
    avatars = args.avatar or DEFAULT_AVATARS
    return run_report(
        "eval",
        args,
        lambda config, data: write_report(
            config, data, Path(args.out), avatars, args.width, args.height
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
