"""`talking-head-cam bench`: how fast the pipeline is, and how much CPU the daemon takes.

Speed is measured here, never asserted by timed tests. Three parts:

- the whole pipeline unpaced (per-stage latency, loop fps, CPU cores busy), once with OpenCV's
  default thread pool and once with cv2.setNumThreads(1). The driver is a video file made
  from the default avatar at the camera size (decoded for real); the output goes through the
  same pixel-format conversion the virtual camera does, plus an MP4 encode;
- the daemon paced at the output rate (FrameLoop, capture thread, sink thread), as it runs
  for real: CPU % of one core;
- our piecewise-affine warp side by side with scikit-image's PiecewiseAffineTransform + warp
  on the same avatar mesh and image: speed ratio and mean pixel difference;
- the engines side by side (`engines`: cpu, cuda, tensorrt) at 720p and 1080p in one run:
  per-stage latency, capture-to-output latency and loop fps of each engine this machine
  can run, and why not for the others.

CPU cores busy = process CPU time / wall time, over all threads (capture, MediaPipe, OpenCV,
sinks).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from daemon.capture import Capture, VideoFileReader
from daemon.config import (
    CaptureConfig,
    Config,
    FileSinkConfig,
    MeshGeneratorConfig,
    NullSinkConfig,
    VirtualCamSinkConfig,
)
from daemon.frames import CapturedFrame
from daemon.pipeline import FrameLoop, build_pipeline, make_generator
from daemon.sinks import FileSink, SinkWorker, bgr_to_i420, bgr_to_yuyv
from daemon.stats import RollingStats, StageSummary
from engines.generator.avatar import load_avatar
from engines.generator.interface import Generator
from engines.generator.warp import Roi, warp_image
from engines.motion.estimator import Motion

ENGINE_SIZES = ((1280, 720), (1920, 1080))
ENGINES = ("cpu", "cuda", "tensorrt")
ENGINE_STAGES = ("landmarks", "motion", "generator", "sink:virtualcam I420", "capture_to_output")

# The targets.
GENERATOR_MEDIAN_TARGET_MS = 8.0
PIPELINE_FPS_TARGET = 60.0
PIPELINE_CORES_TARGET = 1.0
WARP_SPEEDUP_TARGET = 200.0
# Speed as ratios to the landmark stage timed in the same run (these machines differ ~2x in
# speed from one day to the next): a whole-pipeline frame and the generator.
FRAME_PER_LANDMARKS_TARGET = 3.0
GENERATOR_PER_LANDMARKS_TARGET = 1.3

WARP_SIZE = 512  # the warp comparison's output, pixels (square)
WARP_MOTION = Motion(yaw=15.0, mouth_open=0.15)
PACED_WARMUP_S = 1.0  # the paced daemon runs this long before CPU time is counted


def _threads_label(threads: int | None) -> str:
    return f"default ({cv2.getNumThreads()})" if threads is None else str(threads)


@contextmanager
def opencv_threads(threads: int | None) -> Iterator[None]:
    """OpenCV's thread pool at `threads` (None: leave it) for the block, then as before."""
    before = cv2.getNumThreads()
    if threads is not None:
        cv2.setNumThreads(threads)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


@dataclass(frozen=True, slots=True)
class CpuClock:
    """Wall and process CPU time (all threads) at one moment."""

    wall_s: float
    cpu_s: float

    @classmethod
    def now(cls) -> CpuClock:
        return cls(time.perf_counter(), time.process_time())

    def cores_since(self, start: CpuClock) -> float:
        """CPU cores busy on average since `start`: CPU time / wall time."""
        return (self.cpu_s - start.cpu_s) / max(self.wall_s - start.wall_s, 1e-9)


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class UnpacedRun:
    """The whole pipeline as fast as it goes, one OpenCV thread setting."""

    threads: str
    frames: int
    loop_fps: float
    cores: float
    stats: RollingStats

    @property
    def generator(self) -> StageSummary | None:
        return self.stats.summary().get("generator")

    def report(self, width: int, height: int) -> str:
        return (
            f"pipeline at {width}x{height}, {self.frames} frames, unpaced, "
            f"OpenCV threads: {self.threads}\n{self.stats.format_table()}\n"
            f"loop fps (unpaced, whole pipeline): {self.loop_fps:.1f} — capture → landmarks → "
            "motion → generator → I420 for the virtual camera; the YUYV and MP4 rows are "
            "optional sinks, timed apart\n"
            f"CPU cores busy: {self.cores:.2f}"
        )


@dataclass(frozen=True, slots=True)
class PacedRun:
    """The daemon's threads at the output rate, one OpenCV thread setting."""

    threads: str
    seconds: float
    fps: float
    cores: float
    generator_median_ms: float


@dataclass(frozen=True, slots=True)
class WarpTiming:
    name: str
    median_ms: float
    runs: int
    mean_abs_diff: float | None  # vs scikit-image, 0–255, over pixels both cover


@dataclass(frozen=True, slots=True)
class WarpComparison:
    """Our warp vs scikit-image's on the same mesh, image and deformation."""

    vertices: int
    triangles: int
    image_size: tuple[int, int]  # (width, height) of the warped avatar image
    ours: tuple[WarpTiming, ...]
    skimage: WarpTiming | None
    skimage_missing: str | None  # why scikit-image was not run
    both_cover: float  # share of the output both warps cover
    rest_diff: float | None  # mean |diff| with dest = the rest mesh (no deformation)

    def ratio(self, timing: WarpTiming) -> float | None:
        if self.skimage is None:
            return None
        return self.skimage.median_ms / timing.median_ms

    def report(self) -> str:
        w, h = self.image_size
        lines = [
            "warp: ours (engines.generator.warp.warp_image) vs scikit-image "
            "PiecewiseAffineTransform + warp",
            f"same avatar mesh ({self.vertices} vertices, {self.triangles} triangles) and image "
            f"({w}x{h}) into a {WARP_SIZE}x{WARP_SIZE} frame, dest = MeshGenerator.deform(Motion("
            f"yaw={WARP_MOTION.yaw:g}, mouth_open={WARP_MOTION.mouth_open:g})), "
            "OpenCV threads: 1",
            f"{'':<34}{'median ms':>10}{'runs':>6}{'speed ratio':>13}{'mean |diff|':>13}",
        ]
        rows = [self.skimage] if self.skimage else []
        for timing in (*rows, *self.ours):
            ratio = self.ratio(timing)
            diff = timing.mean_abs_diff
            lines.append(
                f"{timing.name:<34}{timing.median_ms:>10.2f}{timing.runs:>6}"
                f"{'-' if ratio is None else f'{ratio:.0f}x':>13}"
                f"{'-' if diff is None else f'{diff:.2f}':>13}"
            )
        if self.skimage_missing:
            lines.append(f"scikit-image: {self.skimage_missing}")
        else:
            lines.append(
                f"mean |diff| in 0-255 levels over the {self.both_cover:.1%} of pixels both "
                f"cover; at rest (no deformation) {self.rest_diff:.2f}: the same warp, "
                "scikit-image triangulating the points itself (Delaunay)"
            )
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class EngineRun:
    """One engine at one size, unpaced; or why this machine cannot run it."""

    engine: str
    width: int = 0
    height: int = 0
    frames: int = 0
    loop_fps: float = 0.0
    stages_ms: tuple[tuple[str, float], ...] = ()  # (stage, median ms)
    unavailable: str = ""


def engines_report(runs: tuple[EngineRun, ...]) -> str:
    """The engines side by side: one row per engine and size."""
    names = ("landmarks", "motion", "generator", "I420", "capture→out")
    lines = [
        "engines side by side (unpaced, whole pipeline; median ms per stage; capture→out = "
        "a frame's latency from the decoded camera frame to the I420 output)",
        f"{'engine':<10}{'size':>11}" + "".join(f"{n:>13}" for n in names) + f"{'loop fps':>10}",
    ]
    for run in runs:
        if run.unavailable:
            lines.append(f"{run.engine:<10}{'-':>11}  unavailable: {run.unavailable}")
            continue
        stages = dict(run.stages_ms)
        cells = "".join(f"{stages.get(s, float('nan')):>13.2f}" for s in ENGINE_STAGES)
        lines.append(
            f"{run.engine:<10}{f'{run.width}x{run.height}':>11}{cells}{run.loop_fps:>10.1f}"
        )
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class BenchResult:
    unpaced: tuple[UnpacedRun, ...]
    paced: tuple[PacedRun, ...]
    warp: WarpComparison | None
    load_before: float  # 1-minute load average before the runs (others competing for CPU)
    engines: tuple[EngineRun, ...] = ()

    def report(self, config: Config) -> str:
        out = config.output
        cap = config.capture
        parts = [
            f"Talking Head Cam bench: output {out.width}x{out.height} @ {out.fps:g} fps, driver "
            f"{cap.width}x{cap.height} MPEG-4 clip of the default avatar, {os.cpu_count()} CPU "
            f"cores (load average {self.load_before:.2f} before the runs), OpenCV "
            f"{cv2.__version__}\n"
            "CPU cores busy = process CPU time / wall time (all threads: capture, MediaPipe, "
            "OpenCV, sinks)",
            *(run.report(out.width, out.height) for run in self.unpaced),
        ]
        if self.paced:
            seconds = self.paced[0].seconds
            rows = [
                f"daemon paced at {out.fps:g} fps, {out.width}x{out.height}, {seconds:g} s per "
                f"setting (FrameLoop; the capture thread plays the clip at {cap.fps:g} fps; "
                "virtual-camera pixel conversion on the sink thread, no device)",
                f"{'OpenCV threads':<16}{'fps':>8}{'CPU % of one core':>20}{'generator ms':>14}",
            ]
            rows += [
                f"{run.threads:<16}{run.fps:>8.1f}{100 * run.cores:>20.0f}"
                f"{run.generator_median_ms:>14.2f}"
                for run in self.paced
            ]
            parts.append("\n".join(rows))
        if self.warp is not None:
            parts.append(self.warp.report())
        if self.engines:
            parts.append(engines_report(self.engines))
        parts.append(self.targets(config))
        return "\n\n".join(parts)

    def ratio_targets(self) -> list[str]:
        """A whole-pipeline frame (1 / loop fps) and the generator, each per landmark stage
        median of the same run."""
        frames, generators = [], []
        for run in self.unpaced:
            stages = run.stats.summary()
            landmarks, generator = stages.get("landmarks"), stages.get("generator")
            if landmarks is None or generator is None or run.loop_fps <= 0:
                continue
            frame_ms = 1000.0 / run.loop_fps
            where = f"threads {run.threads}"
            frames.append(
                (
                    frame_ms / landmarks.median_ms,
                    f"{frame_ms:.1f} / {landmarks.median_ms:.2f} ms, {where}",
                )
            )
            generators.append(
                (
                    generator.median_ms / landmarks.median_ms,
                    f"{generator.median_ms:.2f} / {landmarks.median_ms:.2f} ms, {where}",
                )
            )
        if not frames:
            return []
        return [
            _ratio_line("whole-pipeline frame", FRAME_PER_LANDMARKS_TARGET, frames),
            _ratio_line("generator", GENERATOR_PER_LANDMARKS_TARGET, generators),
        ]

    def targets(self, config: Config) -> str:
        out = config.output
        lines = ["targets"]
        generators = [(run, run.generator) for run in self.unpaced if run.generator]
        if generators:
            met = all(g.median_ms <= GENERATOR_MEDIAN_TARGET_MS for _, g in generators)
            shown = "; ".join(
                f"{g.median_ms:.2f} ms (p95 {g.p95_ms:.2f}) with threads {run.threads}"
                for run, g in generators
            )
            lines.append(
                f"generator median <= {GENERATOR_MEDIAN_TARGET_MS:g} ms at "
                f"{out.width}x{out.height}: {shown}: {_verdict(met)}"
            )
        if self.unpaced:
            fits = [
                r
                for r in self.unpaced
                if r.loop_fps >= PIPELINE_FPS_TARGET and r.cores <= PIPELINE_CORES_TARGET
            ]
            shown = "; ".join(
                f"{r.loop_fps:.1f} fps on {r.cores:.2f} cores with threads {r.threads}"
                for r in self.unpaced
            )
            lines.append(
                f"whole pipeline >= {PIPELINE_FPS_TARGET:g} fps with <= "
                f"{PIPELINE_CORES_TARGET:g} core busy: {shown}: {_verdict(bool(fits))}"
            )
        lines += self.ratio_targets()
        if self.warp is not None and self.warp.skimage is not None:
            shown = "; ".join(
                f"{self.warp.ratio(t):.0f}x {t.name}" for t in self.warp.ours if self.warp.ratio(t)
            )
            best = max(self.warp.ratio(t) or 0.0 for t in self.warp.ours)
            lines.append(
                f"warp >= {WARP_SPEEDUP_TARGET:g}x scikit-image: {shown}: "
                f"{_verdict(best >= WARP_SPEEDUP_TARGET)}"
            )
        if self.paced:
            shown = "; ".join(
                f"{100 * r.cores:.0f}% of one core with threads {r.threads}" for r in self.paced
            )
            lines.append(f"daemon CPU at {out.height}p{out.fps:g}: {shown} (no target)")
        return "\n".join(lines)


def _ratio_line(name: str, target: float, shown: list[tuple[float, str]]) -> str:
    text = "; ".join(f"{ratio:.2f}x ({detail})" for ratio, detail in shown)
    met = all(ratio <= target for ratio, _ in shown)
    return f"{name} <= {target:g}x the landmark stage: {text}: {_verdict(met)}"


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


# ---------------------------------------------------------------- the driver


def make_driver_clip(
    path: Path, frames: int, width: int = 640, height: int = 480, fps: float = 30
) -> Path:
    """A camera-like clip: the default avatar drifting slowly across the frame."""
    avatar = cv2.resize(load_avatar("default"), (width, height))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
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


# ---------------------------------------------------------------- the runs


def run_unpaced(
    config: Config, generator: Generator, clip: Path, frames: int, threads: int | None, tmp: Path
) -> UnpacedRun:
    """Every stage back to back for `frames` driver frames, timed."""
    stats = RollingStats(window=frames)
    with opencv_threads(threads):
        label = _threads_label(threads)
        pipeline = build_pipeline(config, stats, generator)
        reader = VideoFileReader(str(clip))
        sink = FileSink(FileSinkConfig(type="file", path=str(tmp / "out.mp4")), config.output)
        sink.open()
        done, optional_s = 0, 0.0
        start = CpuClock.now()
        try:
            for index in range(frames):
                image = _timed(stats, "capture_decode", reader.read)
                if image is None:
                    break
                now = time.monotonic()
                out = pipeline.process(CapturedFrame(image, now, index), now)
                _timed(stats, "sink:virtualcam I420", bgr_to_i420, out)
                stats.frame_published(time.monotonic())
                done += 1
                # the optional formats and sinks: timed, but kept out of the loop's rate
                optional = time.perf_counter()
                _timed(stats, "sink:virtualcam YUYV", bgr_to_yuyv, out)
                _timed(stats, f"sink:file {sink.codec}", sink.write, out)
                optional_s += time.perf_counter() - optional
            end = CpuClock.now()
        finally:
            reader.close()
            sink.close()
            pipeline.close()
    elapsed = end.wall_s - start.wall_s - optional_s
    cores = (end.cpu_s - start.cpu_s - optional_s) / elapsed
    return UnpacedRun(label, done, done / elapsed, cores, stats)


def run_engine(config: Config, engine: str, clip: Path, frames: int) -> EngineRun:
    """The whole pipeline on one engine, unpaced: per-stage medians, capture-to-output
    latency (decoded frame in → I420 out) and loop fps."""
    stats = RollingStats(window=frames)
    pipeline = build_pipeline(config, stats, engine=engine)
    reader = VideoFileReader(str(clip))
    done, start = 0, time.perf_counter()
    try:
        for index in range(frames):
            image = reader.read()
            if image is None:
                break
            t_in = time.perf_counter()
            now = time.monotonic()
            out = pipeline.process(CapturedFrame(image, now, index), now)
            _timed(stats, "sink:virtualcam I420", bgr_to_i420, out)
            stats.record("capture_to_output", (time.perf_counter() - t_in) * 1e3)
            done += 1
        elapsed = time.perf_counter() - start
    finally:
        reader.close()
        pipeline.close()
    summary = stats.summary()
    stages = tuple((s, summary[s].median_ms) for s in ENGINE_STAGES if s in summary)
    out = config.output
    return EngineRun(engine, out.width, out.height, done, done / elapsed, stages)


def at_size(config: Config, width: int, height: int) -> Config:
    """`config` with camera and output at width x height."""
    data = config.model_dump()
    for section in ("capture", "output"):
        data[section] |= {"width": width, "height": height}
    return Config.model_validate(data)


def compare_engines(
    config: Config, frames: int, tmp: Path, sizes: tuple[tuple[int, int], ...] = ENGINE_SIZES
) -> tuple[EngineRun, ...]:
    """Every engine at every size, in one run; an engine this machine lacks gets one row
    saying why."""
    from daemon.errors import EngineUnavailable
    from engines.runtime.select import choose_engines

    runs: list[EngineRun] = []
    clips = {
        size: make_driver_clip(tmp / f"driver_{size[0]}x{size[1]}.mp4", frames, *size)
        for size in sizes
    }
    for engine in ENGINES:
        try:
            choose_engines(engine)
        except EngineUnavailable as exc:
            why = str(exc).split(" but ", 1)[-1].split("; set engines", 1)[0]
            runs.append(EngineRun(engine, unavailable=why))
            continue
        runs += [run_engine(at_size(config, *size), engine, clips[size], frames) for size in sizes]
    return tuple(runs)


class ConversionSink:
    """Stands in for the virtual camera: the same BGR → I420/YUYV conversion, no device."""

    def __init__(self, pixel_format: str):
        self.name = f"virtualcam {pixel_format} (no device)"
        self._convert = bgr_to_i420 if pixel_format == "I420" else bgr_to_yuyv

    def open(self) -> None:
        pass

    def write(self, frame: np.ndarray) -> None:
        self._convert(frame)

    def close(self) -> None:
        pass


def run_paced(
    config: Config, generator: Generator, clip: Path, seconds: float, threads: int | None
) -> PacedRun:
    """The daemon's own threads (capture, frame loop, sink) at the output rate; CPU time is
    counted over `seconds` after a warm-up."""
    stats = RollingStats()
    pixel_format = next(
        (s.pixel_format for s in config.sinks if isinstance(s, VirtualCamSinkConfig)), "I420"
    )
    with opencv_threads(threads):
        label = _threads_label(threads)
        pipeline = build_pipeline(config, stats, generator)
        capture = Capture(
            CaptureConfig(source=str(clip), loop=True, fps=config.capture.fps), own_labels=()
        ).start()
        sink = SinkWorker(ConversionSink(pixel_format), NullSinkConfig(type="null"), stats)
        # FrameLoop only posts to its sinks: one worker stands in for the SinkSet.
        loop = FrameLoop(capture, pipeline, sink, config.output.fps, stats)  # type: ignore[arg-type]
        stop = threading.Event()
        thread = threading.Thread(target=loop.run, args=(stop,), name="bench:frame-loop")
        try:
            capture.wait_for_frame()
            thread.start()
            stop.wait(min(PACED_WARMUP_S, seconds))  # benchmark: real time is what is measured
            start, first = CpuClock.now(), loop.frames_published
            stop.wait(seconds)
            end, last = CpuClock.now(), loop.frames_published
        finally:
            stop.set()
            if thread.is_alive():
                thread.join()
            capture.close()
            sink.close()
            pipeline.close()
    generator_stats = stats.summary().get("generator")
    return PacedRun(
        label,
        seconds,
        (last - first) / (end.wall_s - start.wall_s),
        end.cores_since(start),
        generator_stats.median_ms if generator_stats else float("nan"),
    )


# ---------------------------------------------------------------- warp vs scikit-image


def _median_ms(fn: Callable[[], object], runs: int, warm_up: bool = True) -> float:
    """Median wall time of `runs` calls (after one untimed call, if `warm_up`), in ms."""
    if warm_up:
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def _mesh_generator(config: Config, generator: Generator):
    """A MeshGenerator of the configured avatar at WARP_SIZE² (reusing the prepared avatar)."""
    from engines.generator.mesh_cpu import MeshGenerator

    if isinstance(generator, MeshGenerator):
        return MeshGenerator(generator.config, generator.avatar, WARP_SIZE, WARP_SIZE)
    from engines.generator.avatar_prep import prepare_avatar

    return MeshGenerator(
        MeshGeneratorConfig(), prepare_avatar(config.avatar.image), WARP_SIZE, WARP_SIZE
    )


def compare_warp(
    config: Config, generator: Generator, ours_runs: int, skimage_runs: int
) -> WarpComparison:
    """Our warp and scikit-image's on the same mesh, image and deformed destination."""
    mesh_gen = _mesh_generator(config, generator)
    image = mesh_gen.avatar.image
    triangles, source = mesh_gen.mesh.triangles, mesh_gen.source
    dest = mesh_gen.deform(WARP_MOTION)
    roi = Roi(0, 0, WARP_SIZE, WARP_SIZE)
    scales = sorted({1, getattr(mesh_gen.config, "map_scale", 1)})
    configured = getattr(mesh_gen.config, "map_scale", 1)

    def ours(points: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
        return warp_image(image, triangles, points[:, :2], source, roi, points[:, 2], scale)

    try:
        from scipy.spatial import Delaunay
        from skimage.transform import PiecewiseAffineTransform, warp
    except ImportError as exc:
        missing: str | None = f"skipped ({exc.name} not installed: pip install scikit-image)"
    else:
        missing = None if skimage_runs > 0 else "skipped (--skimage-runs 0)"

    def skimage(points: np.ndarray) -> np.ndarray:
        # warp() wants the output → input map: estimate it from (dest, src); (x, y) order.
        if hasattr(PiecewiseAffineTransform, "from_estimate"):  # scikit-image >= 0.26
            tform = PiecewiseAffineTransform.from_estimate(points[:, :2], source)
        else:
            tform = PiecewiseAffineTransform()
            tform.estimate(points[:, :2], source)
        shape = (WARP_SIZE, WARP_SIZE)
        return warp(image, tform, output_shape=shape, order=1, preserve_range=True)

    with opencv_threads(1):
        ours_ms = {s: _median_ms(lambda s=s: ours(dest, s), ours_runs) for s in scales}
        sk_timing, diffs, both_cover, rest_diff = None, {}, 0.0, None
        if missing is None:
            sk_out: list[np.ndarray] = []
            sk_ms = _median_ms(lambda: sk_out.append(skimage(dest)), skimage_runs, False)
            sk_timing = WarpTiming("scikit-image (estimate + warp)", sk_ms, skimage_runs, None)
            ys, xs = np.mgrid[0:WARP_SIZE, 0:WARP_SIZE]
            grid = np.column_stack([xs.ravel(), ys.ravel()])
            sk_covers = (Delaunay(dest[:, :2]).find_simplex(grid) >= 0).reshape(ys.shape)
            for scale in scales:
                warped, covered = ours(dest, scale)
                both = covered & sk_covers
                diffs[scale] = float(np.abs(warped - sk_out[-1])[both].mean())
                if scale == 1:
                    both_cover = float(both.mean())
            rest = mesh_gen.rest
            warped, covered = ours(rest, 1)
            rest_diff = float(np.abs(warped - skimage(rest))[covered].mean())
    timings = tuple(
        WarpTiming(
            f"ours, map_scale {s}{' (config)' if s == configured else ''}",
            ours_ms[s],
            ours_runs,
            diffs.get(s),
        )
        for s in scales
    )
    return WarpComparison(
        len(mesh_gen.mesh.vertices),
        len(triangles),
        (image.shape[1], image.shape[0]),
        timings,
        sk_timing,
        missing,
        both_cover,
        rest_diff,
    )


# ---------------------------------------------------------------- all together


def run_bench(
    config: Config,
    frames: int = 300,
    *,
    paced_s: float = 5.0,
    warp_runs: int = 200,
    skimage_runs: int = 3,
    engine_frames: int = 100,
) -> BenchResult:
    """Unpaced and paced pipeline runs with OpenCV's default threads and with one thread,
    the warp comparison, then the engines side by side. `paced_s` 0 skips the paced runs,
    `warp_runs` 0 the warp part, `skimage_runs` 0 only scikit-image, `engine_frames` 0 the
    engines."""
    load_before = os.getloadavg()[0]
    generator = make_generator(config)
    cap = config.capture
    with tempfile.TemporaryDirectory(prefix="thc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        clip = make_driver_clip(tmp / "driver.mp4", frames, cap.width, cap.height, cap.fps)
        unpaced = tuple(
            run_unpaced(config, generator, clip, frames, threads, tmp) for threads in (None, 1)
        )
        paced = (
            tuple(run_paced(config, generator, clip, paced_s, threads) for threads in (None, 1))
            if paced_s > 0
            else ()
        )
        engines = compare_engines(config, engine_frames, tmp) if engine_frames > 0 else ()
    warp = compare_warp(config, generator, warp_runs, skimage_runs) if warp_runs > 0 else None
    return BenchResult(unpaced, paced, warp, load_before, engines)
