"""Soak: the whole daemon in this process (capture → landmarks → motion → generator → sinks,
supervisor, reloads) for a long run with periodic faults of every kind, watching memory,
file descriptors, threads and the frame rate, and checking every published frame against
every camera frame. `make soak` runs 100,000 frames and writes reports/soak.md with plots;
the test suite runs a short form (tests/test_soak.py). Test support: uses thc_testing.faults.

    python -m thc_tools.soak [--frames 100000] [--out reports] [--size 320x240] [--fps 120]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from thc_testing.faults import control_path, pixelate, set_fault, watch
from thc_testing.plugin import ENV as SOAK_ENV
from tqdm import tqdm

from daemon.config import Config, load_config
from daemon.memory import HeapStatus, heap_status
from daemon.notify import Notifier
from engines.progress import progress

log = logging.getLogger(__name__)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PROBE, DEVICE = "probe.ctl", "device.ctl"  # fault sinks: one checks frames, one gets faults
CAMERA_FAULTS = {"camera_stall": "stalled", "camera_error": "lost", "camera_vanish": "missing"}
SINK_FAULTS = {"sink_fail": "failed", "sink_raise": "failed", "sink_block": "stalled"}
FAULT_KINDS = (
    *CAMERA_FAULTS,
    "face_absent",
    *SINK_FAULTS,
    "sink_refuse",
    "avatar_corrupt",
    "avatar_deleted",
    "config_invalid",
    "config_valid",
)
# log lines one fault cycle may write (the fault, any second state, the recovery)
MAX_STATE_LINES = {
    "camera_stall": 2,
    "camera_error": 2,
    "camera_vanish": 3,
    "sink_fail": 2,
    "sink_raise": 2,
    "sink_block": 2,
    "sink_refuse": 3,
}
LEAK_MAD = 30.0  # a published frame this close (mean abs difference) to a camera frame leaks
LEAK_CORR = 0.8  # … or this correlated
THUMB = (32, 24)  # grey: cheap enough to check every frame at 100+ fps


# ---------------------------------------------------------------- the privacy check


class CameraLeakCheck:
    """Compares a frame with every frame the camera can deliver (as they are and with the
    face pixelated away), on small thumbnails: smallest mean abs difference, largest
    correlation. A published frame close to any of them is a leak."""

    def __init__(self, camera_frames: Sequence[np.ndarray], thumb: tuple[int, int] = THUMB):
        self._size = thumb
        frames = list(camera_frames) + [pixelate(f) for f in camera_frames]
        thumbs = np.stack([self._thumb(f) for f in frames])
        self._thumbs = thumbs
        centred = thumbs - thumbs.mean(1, keepdims=True)
        self._unit = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-6)

    def _thumb(self, image: np.ndarray) -> np.ndarray:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return cv2.resize(grey, self._size, interpolation=cv2.INTER_AREA).astype(np.float32).ravel()

    def closeness(self, image: np.ndarray) -> tuple[float, float]:
        t = self._thumb(image)
        mad = float(np.abs(self._thumbs - t).mean(1).min())
        centred = t - t.mean()
        corr = float((self._unit @ (centred / max(float(np.linalg.norm(centred)), 1e-6))).max())
        return mad, corr

    def is_leak(self, image: np.ndarray) -> bool:
        mad, corr = self.closeness(image)
        return mad <= LEAK_MAD or corr >= LEAK_CORR


class Probe:
    """Sees every frame the probe sink takes: leak check, count, largest gap."""

    def __init__(self, check: CameraLeakCheck):
        self._check = check
        self.frames = self.leaks = 0
        self.min_mad, self.max_corr = float("inf"), -1.0
        self.max_gap_s = 0.0
        self.long_gaps: list[tuple[float, float]] = []  # (end, seconds) of gaps over 0.2 s
        self._last: float | None = None

    def __call__(self, frame: np.ndarray) -> None:
        now = time.monotonic()
        if self._last is not None:
            gap = now - self._last
            self.max_gap_s = max(self.max_gap_s, gap)
            if gap > 0.2:
                self.long_gaps.append((now, gap))
        self._last = now
        mad, corr = self._check.closeness(frame)
        self.min_mad, self.max_corr = min(self.min_mad, mad), max(self.max_corr, corr)
        self.leaks += mad <= LEAK_MAD or corr >= LEAK_CORR
        self.frames += 1


# ---------------------------------------------------------------- measuring


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float
    frames: int
    rss_mib: float
    fds: int
    threads: int  # Python threads
    native_threads: int  # all of the process's threads (MediaPipe's own included)
    fps: float
    heap_mib: float = 0.0  # malloc: bytes in use (all arenas and mmapped chunks)
    heap_free_mib: float = 0.0  # malloc: freed bytes it still holds (fragmentation)
    py_kblocks: float = 0.0  # Python objects' memory blocks, thousands


def process_status() -> tuple[float, int, int]:
    """(RSS MiB, open fds, native threads) of this process."""
    rss_kib = threads = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss_kib / 1024, len(os.listdir("/proc/self/fd")), threads


class NotifyReceiver:
    """The systemd side of sd_notify, in-process: counts WATCHDOG=1 and their gaps."""

    def __init__(self, path: Path):
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self.pings: list[float] = []
        self.statuses = 0
        self._closed = False
        self._thread = threading.Thread(target=self._receive, name="soak:notify", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                text = self._sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            if "WATCHDOG=1" in text.splitlines():
                self.pings.append(time.monotonic())
            self.statuses += "STATUS=" in text

    def close(self) -> None:
        self._closed = True
        self._thread.join(1)
        self._sock.close()


class LogCounter(logging.Handler):
    """Keeps the state and reload lines of the daemon's log (for 'one line per state change'
    and reload outcomes); the rest (face found/lost...) is not kept, so it cannot grow."""

    KEPT = ("daemon.capture", "daemon.sinks", "daemon.service")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name in self.KEPT:
            self.records.append(record)

    def count(self, text: str, since: int = 0) -> int:
        return sum(text in r.getMessage() for r in self.records[since:])


# ---------------------------------------------------------------- the run


@dataclass
class SoakResult:
    frames: int = 0
    seconds: float = 0.0
    width: int = 0
    height: int = 0
    fps_target: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)
    recoveries: Counter = field(default_factory=Counter)
    state_lines: dict[str, int] = field(default_factory=dict)  # most lines one cycle wrote
    failures: list[str] = field(default_factory=list)
    frames_checked: int = 0
    leaks: int = 0
    min_mad: float = float("inf")
    max_corr: float = -1.0
    max_gap_s: float = 0.0
    watchdog_pings: int = 0
    watchdog_max_gap_s: float = 0.0
    statuses: int = 0
    baseline: tuple[float, int, int, int] = (0.0, 0, 0, 0)  # rss, fds, threads, native
    after: tuple[float, int, int, int] = (0.0, 0, 0, 0)  # once the daemon has stopped
    camera: str = ""
    stages: str = ""  # the daemon's per-stage latency table at the end
    fault_windows: list[tuple[str, float, float]] = field(default_factory=list)
    long_gaps: list[tuple[float, float]] = field(default_factory=list)  # (end, s), over 0.2 s

    def gap_causes(self) -> Counter:
        """Gaps over 0.2 s between published frames, by the fault cycle they fell in."""
        causes: Counter = Counter()
        for end, gap in self.long_gaps:
            kinds = [k for k, t0, t1 in self.fault_windows if t0 <= end and end - gap <= t1]
            causes[kinds[0] if kinds else "no fault"] += 1
        return causes

    def series(self, name: str, warmup: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """(frames, values) of a sampled quantity, after the first `warmup` of the run."""
        kept = [s for s in self.samples if s.frames >= warmup * self.frames]
        return np.array([s.frames for s in kept], float), np.array(
            [getattr(s, name) for s in kept], float
        )

    def slope_per_1e4(self, name: str) -> float:
        """Linear-regression slope of a quantity per 10,000 frames (after warm-up)."""
        x, y = self.series(name)
        if x.size < 3 or np.ptp(x) == 0:
            return 0.0
        return float(np.polyfit(x, y, 1)[0] * 1e4)

    def fps_stats(self) -> tuple[float, float, float]:
        """(min, 5th percentile, median) of the sampled frame rate (after warm-up)."""
        _, fps = self.series("fps", warmup=0.02)
        fps = fps[1:] if fps.size > 1 else fps  # the first sample spans the start
        if fps.size == 0:
            return 0.0, 0.0, 0.0
        return float(fps.min()), float(np.percentile(fps, 5)), float(np.median(fps))


def camera_frames(size: tuple[int, int], count: int = 125) -> tuple[list[np.ndarray], str]:
    """The driving video: a real talking clip from the dev data (centre-cropped to the output
    aspect), else a still of another face than the avatar, drifting."""
    width, height = size
    clip = SHARED_DATA / "driving" / "talk_c.mp4"
    frames: list[np.ndarray] = []
    if clip.is_file():
        cap = cv2.VideoCapture(str(clip))
        while len(frames) < count:
            ok, frame = cap.read()
            if not ok:
                break
            h, w = frame.shape[:2]
            crop_h = min(h, round(w * height / width))
            top = (h - crop_h) // 2
            frames.append(cv2.resize(frame[top : top + crop_h], size, interpolation=cv2.INTER_AREA))
        cap.release()
    if frames:
        return frames, f"{clip.name} ({len(frames)} frames, centre-cropped to {width}x{height})"
    from engines.generator.avatar import load_avatar

    hopper = load_avatar("default")
    other = cv2.applyColorMap(cv2.cvtColor(hopper[:, ::-1], cv2.COLOR_BGR2GRAY), cv2.COLORMAP_JET)
    base = cv2.resize(other, size)
    for i in range(60):
        shift = np.float32([[1, 0, (i % 10) - 5], [0, 1, 0]])
        frames.append(cv2.warpAffine(base, shift, size, borderMode=cv2.BORDER_REFLECT))
    return frames, "a recoloured, mirrored still of the default avatar (no dev data)"


def write_clip(path: Path, frames: Sequence[np.ndarray], fps: float) -> None:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()


def config_text(work: Path, variant: int, size: tuple[int, int], fps: float) -> str:
    """A good config; variants differ in avatar, tracking and motion (a reload rebuilds the
    generator and the landmark graph)."""
    second_avatar = SHARED_DATA / "avatars" / "photo_man_smiling.png"
    avatar = str(second_avatar) if variant % 2 and second_avatar.is_file() else "default"
    web = "web: {enabled: false}\n" if "web" in Config.model_fields else ""
    return (
        f"capture: {{source: 'fault:{work / 'camera.mp4'}', fps: {fps:g}, retry_max_s: 0.2}}\n"
        f"avatar: {{image: '{avatar}'}}\n"
        f"output: {{width: {size[0]}, height: {size[1]}, fps: {fps:g}}}\n"
        f"tracking: {{type: mediapipe, max_faces: {1 + variant % 2}}}\n"
        f"motion: {{gains: {{pose: {1.0 + 0.1 * (variant % 2):.1f}}}}}\n"
        "generator: {type: mesh}\n"
        f"sinks:\n  - {{type: fault, control: {PROBE}}}\n  - {{type: fault, control: {DEVICE}}}\n"
        f"  - {{type: 'null'}}\n{web}log_level: info\n"
    )


class Soak:
    """One soak run: the daemon on the main thread, faults and sampling on two others."""

    def __init__(
        self,
        frames: int,
        work: Path,
        size: tuple[int, int],
        fps: float,
        fault_every: int,
        sample_s: float,
        hold_s: float,
        progress: Callable[[str], None],
    ):
        self.target, self.work, self.size, self.fps = frames, work, size, fps
        self.fault_every, self.sample_s, self.hold_s = fault_every, sample_s, hold_s
        self.progress = progress
        self.result = SoakResult(frames=0, width=size[0], height=size[1], fps_target=fps)
        self.logs = LogCounter()
        self._variant = 0
        self._done = threading.Event()

    # ------------------------------------------------------------ set-up and the run

    def run(self) -> SoakResult:
        from daemon.service import Daemon

        frames, self.result.camera = camera_frames(self.size)
        write_clip(self.work / "camera.mp4", frames, self.fps)  # a camera at the output rate
        self.camera_control = control_path(self.work / "camera.mp4")
        self.device_control = self.work / DEVICE
        self.config_path = self.work / "config.yaml"
        self.config_path.write_text(config_text(self.work, 0, self.size, self.fps))
        probe = Probe(CameraLeakCheck(frames))
        stop_watching = watch(self.work / PROBE, probe)
        notify = NotifyReceiver(self.work / "notify.sock")
        notifier = Notifier({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
        rss, fds, native = process_status()
        self.result.baseline = (rss, fds, threading.active_count(), native)
        self.daemon = Daemon(
            load_config(self.config_path), str(self.config_path), notifier=notifier
        )
        controller = threading.Thread(target=self._control, name="soak:faults", daemon=True)
        sampler = threading.Thread(target=self._sample, name="soak:sampler", daemon=True)
        controller.start()
        sampler.start()
        handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        handlers[signal.SIGUSR1] = signal.getsignal(signal.SIGUSR1)
        started = time.monotonic()
        try:
            self.daemon.run()  # returns once the controller asks it to stop
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            self._done.set()
            self.result.seconds = time.monotonic() - started
            controller.join(5)
            sampler.join(5)
            notify.close()
            stop_watching()
        loop = self.daemon.loop
        self.result.frames = loop.frames_published if loop is not None else 0
        self.result.stages = self.daemon.stats.format_table()
        rss, fds, native = process_status()
        self.result.after = (rss, fds, threading.active_count(), native)
        self.result.frames_checked, self.result.leaks = probe.frames, probe.leaks
        self.result.min_mad, self.result.max_corr = probe.min_mad, probe.max_corr
        self.result.max_gap_s = probe.max_gap_s
        self.result.long_gaps = probe.long_gaps
        self.result.watchdog_pings = len(notify.pings)
        gaps = np.diff(notify.pings)
        self.result.watchdog_max_gap_s = float(gaps.max()) if gaps.size else float("inf")
        self.result.statuses = notify.statuses
        return self.result

    def _sample(self) -> None:
        last_t, last_frames = time.monotonic(), 0
        t0 = last_t
        with progress(self.target, "soak") as bar:  # frames so far, at each sample
            while not self._done.wait(self.sample_s):
                loop = self.daemon.loop
                if loop is None:
                    continue
                now, frames = time.monotonic(), loop.frames_published
                rss, fds, native = process_status()
                fps = (frames - last_frames) / (now - last_t)
                heap = heap_status() or HeapStatus(0.0, 0.0)
                self.result.samples.append(
                    Sample(
                        now - t0,
                        frames,
                        rss,
                        fds,
                        threading.active_count(),
                        native,
                        fps,
                        heap.in_use_mib,
                        heap.held_free_mib,
                        sys.getallocatedblocks() / 1e3,
                    )
                )
                last_t, last_frames = now, frames
                bar.update(frames - bar.n)

    def _control(self) -> None:
        try:
            if not self._until(lambda: self.daemon.loop is not None, 60):
                raise RuntimeError("the daemon did not start")
            if not self._until(lambda: self.daemon.loop.first_frame.is_set(), 60):
                raise RuntimeError("no first frame")
            kinds = itertools.cycle(FAULT_KINDS)
            next_at = self.fault_every
            while self._frames() < self.target and not self._done.is_set():
                if self._frames() >= next_at:
                    kind = next(kinds)
                    self._inject(kind)
                    next_at = self._frames() + self.fault_every
                self._done.wait(0.02)
        except Exception as exc:  # the run ends; the report says why
            log.exception("soak controller failed")
            self.result.failures.append(f"controller: {type(exc).__name__}: {exc}")
        finally:
            self.daemon.request_stop()

    # ------------------------------------------------------------ faults

    def _frames(self) -> int:
        loop = self.daemon.loop
        return loop.frames_published if loop is not None else 0

    def _until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline or self._done.is_set():
                return predicate()
            time.sleep(0.01)
        return True

    def _hold(self) -> None:
        time.sleep(self.hold_s)  # the fault stays on while the daemon retries

    def _inject(self, kind: str) -> None:
        self.result.faults[kind] += 1
        first_record = len(self.logs.records)
        before = self._frames()
        started = time.monotonic()
        try:
            recovered = getattr(self, f"_fault_{kind.split('_')[0]}")(kind)
        except Exception as exc:
            recovered = False
            self.result.failures.append(f"{kind}: {type(exc).__name__}: {exc}")
        flowing = self._until(lambda: self._frames() > before + 5, 5)
        self.result.fault_windows.append((kind, started, time.monotonic()))
        if recovered and flowing:
            self.result.recoveries[kind] += 1
        elif not self.result.failures or not self.result.failures[-1].startswith(kind):
            self.result.failures.append(f"{kind}: no recovery (frames flowing: {flowing})")
        if kind in MAX_STATE_LINES:
            lines = sum(
                r.name in ("daemon.capture", "daemon.sinks")
                for r in self.logs.records[first_record:]
            )
            self.result.state_lines[kind] = max(self.result.state_lines.get(kind, 0), lines)
            if lines > MAX_STATE_LINES[kind]:
                self.result.failures.append(f"{kind}: {lines} state log lines for one fault")
        self.progress(
            f"{self._frames():>7} frames: {kind} {'recovered' if recovered else 'NOT recovered'}"
            f" in {time.monotonic() - started:.1f} s"
        )

    def _capture_state(self) -> str:
        return self.daemon.loop.capture.state

    def _fault_camera(self, kind: str) -> bool:
        word = kind.split("_")[1]
        set_fault(self.camera_control, word)
        reached = self._until(lambda: self._capture_state() == CAMERA_FAULTS[kind], 10)
        self._hold()
        set_fault(self.camera_control, "ok")
        if not reached:
            self.result.failures.append(f"{kind}: capture never showed {CAMERA_FAULTS[kind]}")
        return self._until(lambda: self._capture_state() == "streaming", 15) and reached

    def _fault_face(self, kind: str) -> bool:
        motion = lambda: self.daemon.loop.pipeline.motion.state  # noqa: E731
        set_fault(self.camera_control, "noface")
        reached = self._until(lambda: motion() != "tracked", 10)
        self._hold()
        set_fault(self.camera_control, "ok")
        return self._until(lambda: motion() == "tracked", 15) and reached

    def _device(self):
        return next(w for w in self.daemon.sinks.workers if w.sink.name == f"fault({DEVICE})")

    def _fault_sink(self, kind: str) -> bool:
        if kind == "sink_refuse":  # the device goes away: a write fails, then reopening does
            set_fault(self.device_control, "fail")
            self._until(lambda: self._device().state == "failed", 10)
            set_fault(self.device_control, "refuse")
            reached = self._until(lambda: "refused" in self._device().detail, 15)
        else:
            set_fault(self.device_control, kind.split("_")[1])
            reached = self._until(lambda: self._device().state == SINK_FAULTS[kind], 10)
        self._hold()
        written = self._device().frames_written
        set_fault(self.device_control, "ok")
        return reached and self._until(
            lambda: self._device().state == "ok" and self._device().frames_written > written, 20
        )

    def _reload(self) -> str:
        """SIGHUP's path: the supervisor re-reads the file; 'applied' or 'rejected'."""
        applied, rejected = self.logs.count("reloaded "), self.logs.count("reload rejected: keep")
        self.daemon.request_reload()
        self._until(
            lambda: (
                self.logs.count("reloaded ") > applied
                or self.logs.count("reload rejected: keep") > rejected
            ),
            60,
        )
        if self.logs.count("reloaded ") > applied:
            return "applied"
        return "rejected" if self.logs.count("reload rejected: keep") > rejected else "timeout"

    def _good_config(self) -> str:
        self._variant += 1
        return config_text(self.work, self._variant, self.size, self.fps)

    def _bad_reload_then_good(self, bad: Callable[[], None]) -> bool:
        bad()
        rejected = self._reload() == "rejected"
        self.config_path.unlink(missing_ok=True)
        if self.config_path.is_dir():
            self.config_path.rmdir()
        self.config_path.write_text(self._good_config())
        return rejected and self._reload() == "applied"

    def _fault_avatar(self, kind: str) -> bool:
        good = config_text(self.work, self._variant, self.size, self.fps)
        broken = self.work / "broken.png"
        if kind == "avatar_corrupt":  # a real image, cut off half-way
            data = cv2.imencode(".png", np.full((200, 200, 3), 128, np.uint8))[1].tobytes()
            broken.write_bytes(data[: len(data) // 2])
        else:
            broken.unlink(missing_ok=True)
        avatar = f"avatar: {{image: '{broken}'}}"
        text = "\n".join(
            avatar if line.startswith("avatar:") else line for line in good.splitlines()
        )
        return self._bad_reload_then_good(lambda: self.config_path.write_text(text + "\n"))

    def _fault_config(self, kind: str) -> bool:
        if kind == "config_valid":
            self.config_path.write_text(self._good_config())
            return self._reload() == "applied"
        bad = self.result.faults[kind] % 4
        good = self.config_path.read_text()

        def damage() -> None:
            if bad == 0:
                self.config_path.write_text(good[: len(good) // 2])  # caught half-written
            elif bad == 1:
                self.config_path.write_bytes(b"\xff\xfe garbage \x00")
            elif bad == 2:
                self.config_path.write_text(good.replace("retry_max_s: 0.2", "retry_max_s: soon"))
            else:
                self.config_path.unlink()

        return self._bad_reload_then_good(damage)


def run_soak(
    frames: int,
    *,
    size: tuple[int, int] = (320, 240),
    fps: float = 120,
    fault_every: int = 2000,
    sample_s: float = 1.0,
    hold_s: float = 0.5,
    work: Path | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> SoakResult:
    """Run the daemon in this process for `frames` published frames with a fault every
    `fault_every` frames (all kinds in turn). Must be called on the main thread."""
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="soak-")) if work is None else work
    product_logs = [logging.getLogger(name) for name in ("daemon", "engines")]
    saved_env = {name: os.environ.get(name) for name in (*SOAK_ENV, "XDG_RUNTIME_DIR")}
    saved = [(log.level, log.propagate) for log in product_logs]
    file_handler = logging.FileHandler(work / "daemon.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    soak = Soak(frames, work, size, fps, fault_every, sample_s, hold_s, progress)
    for log in product_logs:  # the service's and the engines' logs go to work/daemon.log
        log.setLevel(logging.INFO)
        log.propagate = False
        log.addHandler(file_handler)
        log.addHandler(soak.logs)
    os.environ.update(SOAK_ENV)  # the fault sources and sinks exist only with this switch
    os.environ["XDG_RUNTIME_DIR"] = str(work)  # the PID file stays out of a real daemon's way
    try:
        return soak.run()
    finally:
        for log, (level, propagate) in zip(product_logs, saved, strict=True):
            log.removeHandler(file_handler)
            log.removeHandler(soak.logs)
            log.setLevel(level)
            log.propagate = propagate
        file_handler.close()
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- verdict and report


@dataclass(frozen=True, slots=True)
class Limits:
    """What a healthy run stays within."""

    rss_slope_mib_per_1e4: float = 2.0
    extra_fds: int = 3  # open at the end over the first sample (after warm-up)
    extra_threads: int = 2
    min_fps_fraction: float = 0.25  # the slowest sample vs the median (a shared 2-core box)
    max_gap_s: float = 1.0  # no published frame for this long: a collapse
    watchdog_gap_s: float = 1.0  # WatchdogSec of the run


def verdict(result: SoakResult, limits: Limits = Limits()) -> list[str]:
    """Every way the run was unhealthy (empty: healthy)."""
    problems = list(result.failures)
    if result.leaks:
        problems.append(f"{result.leaks} published frames were close to a camera frame")
    injected, recovered = sum(result.faults.values()), sum(result.recoveries.values())
    if recovered < injected:
        problems.append(f"recovered from {recovered} of {injected} faults")
    slope = result.slope_per_1e4("rss_mib")
    if slope > limits.rss_slope_mib_per_1e4:
        problems.append(f"memory grows {slope:.2f} MiB per 10^4 frames")
    kept = [s for s in result.samples if s.frames >= 0.1 * result.frames]
    if kept:
        if kept[-1].fds > kept[0].fds + limits.extra_fds:
            problems.append(f"open fds grew from {kept[0].fds} to {kept[-1].fds}")
        if kept[-1].threads > kept[0].threads + limits.extra_threads:
            problems.append(f"threads grew from {kept[0].threads} to {kept[-1].threads}")
    low, _, median = result.fps_stats()
    if median and low < limits.min_fps_fraction * median:
        problems.append(f"fps collapsed to {low:.1f} (median {median:.1f})")
    if result.max_gap_s > limits.max_gap_s:
        problems.append(f"no frame published for {result.max_gap_s:.2f} s")
    if result.watchdog_max_gap_s > limits.watchdog_gap_s:
        problems.append(f"the watchdog went {result.watchdog_max_gap_s:.2f} s without a ping")
    if result.after[1] > result.baseline[1] + limits.extra_fds:
        problems.append(f"fds after shutdown {result.after[1]} > before {result.baseline[1]}")
    if result.after[2] > result.baseline[2]:
        problems.append(f"threads after shutdown {result.after[2]} > before {result.baseline[2]}")
    return problems


def plot(result: SoakResult, out: Path, name: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = np.array([s.frames for s in result.samples], float) / 1e3
    panels = [
        (
            "memory",
            [
                ("rss_mib", "RSS, MiB"),
                ("heap_mib", "malloc in use, MiB"),
                ("heap_free_mib", "malloc freed but held, MiB"),
            ],
            True,
        ),
        (
            "fds_threads",
            [
                ("fds", "open fds"),
                ("threads", "Python threads"),
                ("native_threads", "native threads"),
            ],
            False,
        ),
        ("fps", [("fps", "frames per second")], False),
    ]
    written = []
    for suffix, series, fit in panels:
        fig, ax = plt.subplots(figsize=(7, 2.6), dpi=80)
        for attr, label in series:
            ax.plot(frames, [getattr(s, attr) for s in result.samples], label=label, lw=1)
        if fit:
            x, y = result.series("rss_mib")
            if x.size >= 3:
                a, b = np.polyfit(x, y, 1)
                ax.plot(
                    x / 1e3, a * x + b, "--", lw=1, label=f"fit: {a * 1e4:+.2f} MiB / 10^4 frames"
                )
        ax.set_xlabel("frames published (thousands)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path = out / f"{name}_{suffix}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def write_report(result: SoakResult, out: Path, name: str = "soak") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plots = plot(result, out, name)
    problems = verdict(result)
    low, p5, median = result.fps_stats()
    kept = [s for s in result.samples if s.frames >= 0.1 * result.frames] or result.samples
    first, last = (kept[0], kept[-1]) if kept else (None, None)
    rows = [
        ("frames published", f"{result.frames:,} in {result.seconds / 60:.1f} min"),
        (
            "output",
            f"{result.width}x{result.height}, paced at {result.fps_target:g} fps "
            "(the pipeline's own speed when slower)",
        ),
        ("camera", result.camera),
        (
            "malloc arenas",
            f"MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX', 'unset (glibc: 8 per core)')}"
            " (the systemd units set 2)",
        ),
        ("faults injected", f"{sum(result.faults.values())}"),
        ("recoveries", f"{sum(result.recoveries.values())}"),
        (
            "camera-frame leaks",
            f"{result.leaks} in {result.frames_checked:,} frames checked "
            f"(closest: mean abs diff {result.min_mad:.1f}, "
            f"correlation {result.max_corr:.2f}; a leak is ≤ {LEAK_MAD:g} "
            f"or ≥ {LEAK_CORR:g})",
        ),
        (
            "RSS slope",
            f"{result.slope_per_1e4('rss_mib'):+.3f} MiB per 10^4 frames "
            "(linear fit after the first 10%)",
        ),
        (
            "malloc",
            f"in use {first.heap_mib:.0f} → {last.heap_mib:.0f} MiB (slope "
            f"{result.slope_per_1e4('heap_mib'):+.3f} MiB per 10^4 frames); freed but held "
            f"{first.heap_free_mib:.0f} → {last.heap_free_mib:.0f} MiB (slope "
            f"{result.slope_per_1e4('heap_free_mib'):+.3f})"
            if first
            else "-",
        ),
        (
            "Python objects",
            f"{first.py_kblocks:.0f}k → {last.py_kblocks:.0f}k memory blocks (slope "
            f"{result.slope_per_1e4('py_kblocks'):+.2f}k per 10^4 frames)"
            if first
            else "-",
        ),
        (
            "RSS",
            f"{first.rss_mib:.0f} → {last.rss_mib:.0f} MiB (max "
            f"{max(s.rss_mib for s in result.samples):.0f})"
            if first
            else "-",
        ),
        (
            "open fds",
            f"{first.fds} → {last.fds} (max {max(s.fds for s in result.samples)}, slope "
            f"{result.slope_per_1e4('fds'):+.3f} per 10^4 frames); "
            f"before start {result.baseline[1]}, after stop {result.after[1]}"
            if first
            else "-",
        ),
        (
            "threads (Python)",
            f"{first.threads} → {last.threads} (slope {result.slope_per_1e4('threads'):+.3f} "
            f"per 10^4 frames); before start {result.baseline[2]}, after stop {result.after[2]}"
            if first
            else "-",
        ),
        (
            "threads (native)",
            f"{first.native_threads} → {last.native_threads} (slope "
            f"{result.slope_per_1e4('native_threads'):+.3f} per 10^4 frames); before start "
            f"{result.baseline[3]}, after stop {result.after[3]}"
            if first
            else "-",
        ),
        ("fps", f"median {median:.1f}, 5th percentile {p5:.1f}, min {low:.1f} (per sample)"),
        (
            "longest gap between frames",
            f"{result.max_gap_s * 1e3:.0f} ms; gaps over 200 ms: "
            + (", ".join(f"{n} in {k}" for k, n in result.gap_causes().most_common()) or "none"),
        ),
        (
            "watchdog",
            f"{result.watchdog_pings} pings, longest gap {result.watchdog_max_gap_s:.2f} s "
            "(WatchdogSec 1 s)",
        ),
    ]
    lines = [
        f"# Soak: {result.frames:,} frames with faults",
        "",
        "Generated by `make soak` (`python -m thc_tools.soak`): the whole daemon in one process "
        "(fault-injecting camera over a real face video → MediaPipe landmarks → motion → mesh "
        "generator → sinks; supervisor, sd_notify, SIGHUP-path reloads), with a fault every "
        "few thousand frames, all kinds in turn. Every published frame is compared with "
        "every camera frame.",
        "",
        f"**Verdict: {'healthy' if not problems else 'UNHEALTHY'}**",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        "## Faults",
        "",
        "| kind | injected | recovered | most state log lines per fault |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {kind} | {result.faults[kind]} | {result.recoveries[kind]} | "
            f"{result.state_lines.get(kind, '-')} |"
            for kind in FAULT_KINDS
        ),
        "",
        "## Over time",
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
        "## Per-stage latency at the end (the daemon's own statistics, last 300 frames)",
        "",
        "```",
        result.stages,
        "```",
        "",
    ]
    if problems:
        lines += ["## Problems", "", *(f"- {p}" for p in problems), ""]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines))
    return path


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m thc_tools.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--size", type=parse_size, default=(320, 240), help="WxH")
    parser.add_argument("--fps", type=float, default=120, help="output pacing (max 120)")
    parser.add_argument("--fault-every", type=int, default=2000, help="frames between faults")
    parser.add_argument("--sample-s", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--name", default="soak")
    args = parser.parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="soak-") as work:
        result = run_soak(
            args.frames,
            size=args.size,
            fps=args.fps,
            fault_every=args.fault_every,
            sample_s=args.sample_s,
            work=Path(work),
            progress=lambda line: tqdm.write(line, file=sys.stdout),  # above the bar
        )
    report = write_report(result, args.out, args.name)
    problems = verdict(result)
    print(f"wrote {report}")
    for problem in problems:
        print(f"problem: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
