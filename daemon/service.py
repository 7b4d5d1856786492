"""The daemon: owns the components, talks to systemd, reacts to signals.

Signal handlers only record the signal; the supervising main thread acts on it. The frame
loop runs on its own thread, so a stalled loop is visible to the watchdog (no WATCHDOG=1 is
sent unless frames are really flowing) while SIGTERM is still handled within a second.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from daemon.capture import Capture
from daemon.config import DEFAULT_LABEL, Config, VirtualCamSinkConfig, find_config_path, load_config
from daemon.errors import AvatarError, ConfigError
from daemon.generator import Generator, build_generator
from daemon.landmarks import build_landmarks
from daemon.motion import MotionEstimator
from daemon.notify import Notifier
from daemon.pipeline import FrameLoop, Pipeline
from daemon.sinks import SinkSet
from daemon.stats import RollingStats
from daemon.v4l2 import SYSFS_ROOT

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 2.0
SUPERVISE_TICK_S = 0.1
TEST_HOOKS_ENV = "TALKING_HEAD_CAM_TEST_HOOKS"


def own_labels(config: Config) -> tuple[str, ...]:
    """Card labels of our virtual cameras: capture `auto` must never pick one of them."""
    labels = {DEFAULT_LABEL} | {
        s.label for s in config.sinks if isinstance(s, VirtualCamSinkConfig)
    }
    return tuple(sorted(labels))


def build_generator_or_default(config: Config) -> Generator:
    """The configured generator; a bad avatar file logs the error and uses the embedded
    default instead, so a typo never keeps the camera from starting."""
    try:
        return build_generator(config)
    except AvatarError as exc:
        log.error("%s; using the default avatar", exc)
        return build_generator(config, "default")


def build_pipeline(
    config: Config, stats: RollingStats, generator: Generator | None = None
) -> Pipeline:
    """The whole per-frame path for `config`: landmarks → motion → generator. Raises
    AvatarError when the avatar cannot be used (unless a generator is given)."""
    return Pipeline(
        build_generator(config) if generator is None else generator,
        stats,
        config.output.width,
        config.output.height,
        detector=build_landmarks(config.tracking),
        estimator=MotionEstimator(config.motion),
    )


def pid_file_path(env: Mapping[str, str] = os.environ) -> Path:
    """Where the running daemon leaves its PID, for `talking-head-cam calibrate`."""
    runtime = env.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(runtime) / f"talking-head-cam-{os.getuid()}.pid"


def write_pid_file() -> Path | None:
    path = pid_file_path()
    try:
        path.write_text(f"{os.getpid()}\n")
    except OSError as exc:  # a read-only runtime dir must not stop the camera
        log.warning("cannot write %s (%s); `calibrate` will not find the daemon", path, exc)
        return None
    return path


def remove_pid_file(path: Path | None) -> None:
    try:
        if path is not None and path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass


class Daemon:
    """One running Talking Head Cam: capture, pipeline, sinks, frame loop, systemd glue."""

    def __init__(
        self,
        config: Config,
        config_arg: str | None = None,
        *,
        notifier: Notifier | None = None,
        sysfs_root: Path = SYSFS_ROOT,
        test_hooks: bool | None = None,
    ):
        self.config = config
        self._config_arg = config_arg
        self._notifier = notifier or Notifier()
        self._sysfs_root = sysfs_root
        self._test_hooks = (
            os.environ.get(TEST_HOOKS_ENV) == "1" if test_hooks is None else test_hooks
        )
        self.stats = RollingStats()
        self._stop_requested = False
        self._reload_requested = False
        self._calibration_requested = False
        self._stall_toggles = 0
        self._wake = threading.Event()
        self._loop_stop = threading.Event()
        self.sinks = SinkSet(self.stats, sysfs_root)
        self.loop: FrameLoop | None = None
        self._ready_sent = False
        self._last_status = ""

    # ------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code."""
        self._install_signal_handlers()
        self._pid_file = write_pid_file()
        log.info(
            "starting: %d sink(s), output %dx%d @ %g fps",
            len(self.config.sinks),
            self.config.output.width,
            self.config.output.height,
            self.config.output.fps,
        )
        pipeline = build_pipeline(self.config, self.stats, build_generator_or_default(self.config))
        capture = self._start_capture(self.config)
        self.sinks.configure(self.config.sinks, self.config.output)
        self.loop = FrameLoop(capture, pipeline, self.sinks, self.config.output.fps, self.stats)
        thread = threading.Thread(
            target=self.loop.run, args=(self._loop_stop,), name="frame-loop", daemon=True
        )
        thread.start()
        last_watchdog = last_status = float("-inf")
        try:
            while not self._stop_requested:
                self._wake.wait(SUPERVISE_TICK_S)
                self._wake.clear()
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload()
                if self._calibration_requested:
                    self._calibration_requested = False
                    self.loop.pipeline.calibrate()
                    log.info("calibration requested: the next tracked frame is the neutral face")
                self._apply_test_hooks()
                now = time.monotonic()
                if not self._ready_sent and self.loop.first_frame.is_set():
                    self._ready_sent = True
                    self._notifier.ready(self.status_line())
                    log.info("ready: first frame published")
                if self._watchdog_due(now, last_watchdog) and self.frames_flowing(now):
                    self._notifier.watchdog()
                    last_watchdog = now
                if now - last_status >= STATUS_INTERVAL_S:
                    last_status = now
                    self._send_status()
        finally:
            self._shutdown(thread)
        return 0

    def request_stop(self) -> None:
        self._stop_requested = True
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def request_calibration(self) -> None:
        """Take the next tracked frame as the user's neutral face (SIGUSR1, `calibrate`)."""
        self._calibration_requested = True
        self._wake.set()

    def _shutdown(self, thread: threading.Thread) -> None:
        started = time.monotonic()
        self._notifier.stopping()
        self._loop_stop.set()
        thread.join(0.3)
        if self.loop is not None:
            self.loop.capture.close(0.2)
        self.sinks.close(0.3)
        if self.loop is not None and not thread.is_alive():
            self.loop.pipeline.close()
        remove_pid_file(self._pid_file)
        log.info(
            "stopped in %.2f s after %d frames",
            time.monotonic() - started,
            self.loop.frames_published if self.loop else 0,
        )

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        signal.signal(signal.SIGUSR1, lambda *_: self.request_calibration())
        if self._test_hooks:
            signal.signal(signal.SIGUSR2, lambda *_: self._toggle_stall())

    def _toggle_stall(self) -> None:
        self._stall_toggles += 1
        self._wake.set()

    def _apply_test_hooks(self) -> None:
        """SIGUSR2 (only with TALKING_HEAD_CAM_TEST_HOOKS=1) stalls/resumes the frame loop."""
        if self.loop is None or not self._stall_toggles:
            return
        toggles, self._stall_toggles = self._stall_toggles, 0
        if toggles % 2:
            if self.loop.stalled.is_set():
                self.loop.stalled.clear()
                log.warning("test hook: frame loop resumed")
            else:
                self.loop.stalled.set()
                log.warning("test hook: frame loop stalled")

    # ------------------------------------------------------------ health

    def _watchdog_due(self, now: float, last: float) -> bool:
        interval = self._notifier.watchdog_s
        return interval is not None and now - last >= interval / 3

    def frames_flowing(self, now: float | None = None) -> bool:
        """True when the frame loop published a frame within the last few periods."""
        if self.loop is None or self.loop.heartbeat is None:
            return False
        now = time.monotonic() if now is None else now
        return now - self.loop.heartbeat < max(1.0, 5.0 / self.loop.fps)

    def status_line(self) -> str:
        loop = self.loop
        if loop is None:
            return "starting"
        capture = loop.capture
        state = "live" if capture.state == "streaming" else f"idle (capture {capture.state})"
        if not self.frames_flowing():
            state = "stalled"
        sinks = ", ".join(f"{s.name} {s.state}" for s in self.sinks.statuses())
        face = loop.pipeline.motion.state
        return f"{state}; face {face}; {self.stats.fps():.1f} fps; sinks: {sinks or 'none'}"

    def _send_status(self) -> None:
        line = self.status_line()
        if line != self._last_status:
            self._last_status = line
            self._notifier.status(line)

    # ------------------------------------------------------------ reload

    def reload(self) -> bool:
        """Re-read the config; apply it if valid, otherwise log why and keep the old one."""
        self._notifier.reloading()
        try:
            path = find_config_path(self._config_arg)
            new = load_config(path)
            applied = self.apply(new)
        except (ConfigError, AvatarError) as exc:
            for line in str(exc).splitlines():
                log.error("reload rejected: %s", line.strip())
            log.error("reload rejected: keeping the current config")
            self._notifier.ready(f"reload rejected (see log); {self.status_line()}")
            return False
        log.info("reloaded %s: %s", path, ", ".join(applied) or "no changes")
        self._notifier.ready(self.status_line())
        return True

    def apply(self, new: Config) -> list[str]:
        """Swap in what changed, keep the rest running (an unchanged virtual camera stays open).
        Raises AvatarError before touching anything when the new avatar cannot be loaded."""
        old, loop = self.config, self.loop
        assert loop is not None
        changed = [name for name in Config.model_fields if getattr(old, name) != getattr(new, name)]
        pipeline = loop.pipeline
        if {"avatar", "output", "generator"} & set(changed):
            pipeline.set_generator(build_generator(new), new.output.width, new.output.height)
        if "tracking" in changed:
            pipeline.set_detector(build_landmarks(new.tracking))
        if "motion" in changed and pipeline.estimator is not None:
            pipeline.estimator.reconfigure(new.motion)
        if "capture" in changed or own_labels(old) != own_labels(new):
            loop.capture.close(0.2)
            loop.capture = self._start_capture(new)
        if {"sinks", "output"} & set(changed):
            self.sinks.configure(new.sinks, new.output)
        loop.fps = new.output.fps
        if "log_level" in changed:
            logging.getLogger().setLevel(new.log_level.upper())
        self.config = new
        return changed

    def _start_capture(self, config: Config) -> Capture:
        return Capture(
            config.capture, own_labels=own_labels(config), sysfs_root=self._sysfs_root
        ).start()
