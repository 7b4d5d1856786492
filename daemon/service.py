"""The daemon: owns the components, talks to systemd, reacts to signals.

Signal handlers only record the signal and wake the supervising main thread, which acts on
it. They take no lock (daemon.wakeup): a handler runs on the main thread wherever that was
interrupted, maybe inside the very lock it would wait for, forever. The frame loop runs on its
own thread, so a stalled loop is visible to the watchdog (no WATCHDOG=1 is sent unless frames
are really flowing) while SIGTERM is still handled within a second. The web page and WebRTC
endpoint (daemon.web) run an asyncio loop on a third thread; live changes from it go through
`update_settings`/`apply`, serialised with reloads by one lock.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import test_support
from daemon.capture import Capture
from daemon.config import (
    DEFAULT_LABEL,
    Config,
    VirtualCamSinkConfig,
    find_config_path,
    load_config,
    runtime_file_path,
    validate_config,
)
from daemon.errors import AvatarError, ConfigError, EngineUnavailable
from daemon.memory import trim_heap
from daemon.notify import Notifier
from daemon.pipeline import FrameLoop, build_detector, build_pipeline, make_generator
from daemon.sinks import SinkSet
from daemon.stats import RollingStats
from daemon.v4l2 import SYSFS_ROOT
from daemon.wakeup import Wakeup
from engines.generator.interface import Generator

if TYPE_CHECKING:
    from daemon.web import WebServer
    from engines.runtime.select import EngineChoice

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 2.0
SUPERVISE_TICK_S = 0.1
HEAP_TRIM_INTERVAL_S = 60.0  # give freed frame buffers back to the kernel (daemon.memory)
SHUTDOWN_WAIT_S = 0.3  # the longest SIGTERM waits for stuck threads (systemd: within 1 s)
# ... but the sinks get this long whatever the frame loop and camera took of it: a file is
# finished (its index written) only when its sink closes, and a loaded machine's frame loop
# could take the whole budget mid-frame, leaving a file unplayable.
SINKS_FINISH_S = 0.25
LIVE_SECTIONS = ("motion", "generator", "avatar")  # what the web page may change live


def own_labels(config: Config) -> tuple[str, ...]:
    """Card labels of our virtual cameras: capture `auto` must never pick one of them."""
    labels = {DEFAULT_LABEL} | {
        s.label for s in config.sinks if isinstance(s, VirtualCamSinkConfig)
    }
    return tuple(sorted(labels))


def build_generator_or_default(config: Config, engine: str = "cpu") -> Generator:
    """The configured generator; a bad avatar file logs the error and uses the embedded
    default instead, so a typo never keeps the camera from starting."""
    try:
        return make_generator(config, engine=engine)
    except AvatarError as exc:
        log.error("%s; using the default avatar", exc)
        return make_generator(config, "default", engine)


def choose_engine(config: Config) -> EngineChoice:
    """`engines` resolved on this machine (without importing torch where no NVIDIA GPU is
    listed). Raises EngineUnavailable for an explicit backend that cannot run."""
    from engines.runtime.backends import quick_probe
    from engines.runtime.select import choose_engines

    return choose_engines(config.engines, quick_probe)


def pid_file_path(env: Mapping[str, str] = os.environ) -> Path:
    """Where the running daemon leaves its PID, for `talking-head-cam calibrate`."""
    return runtime_file_path(".pid", env)


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


def write_web_file(url: str) -> Path | None:
    """Leave the URL of the web API for the CLI (exact, even with web.port 0)."""
    path = runtime_file_path(".web.json")
    try:
        path.write_text(json.dumps({"pid": os.getpid(), "url": url}) + "\n")
    except OSError as exc:
        log.warning("cannot write %s (%s); the CLI will use the config's web address", path, exc)
        return None
    return path


def remove_web_file(path: Path | None) -> None:
    try:
        if path is not None and json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `patch` laid over it, mappings merged key by key."""
    merged = dict(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class Daemon:
    """One running Talking Head Cam: capture, pipeline, sinks, frame loop, systemd glue."""

    def __init__(
        self,
        config: Config,
        config_arg: str | None = None,
        *,
        notifier: Notifier | None = None,
        sysfs_root: Path = SYSFS_ROOT,
    ):
        self.config = config
        self._config_arg = config_arg
        self._notifier = notifier or Notifier()
        self._sysfs_root = sysfs_root
        self._stall_signal = test_support.loaded() is not None  # test support only
        self.stats = RollingStats()
        self._stop_requested = False
        self._reload_requested = False
        self._calibration_requested = False
        self._stall_toggles = 0
        self._wake = Wakeup()  # set from signal handlers: must take no lock
        self._loop_stop = threading.Event()
        self.sinks = SinkSet(self.stats, sysfs_root)
        self.loop: FrameLoop | None = None
        self.engine: EngineChoice | None = None  # resolved when run() starts
        self.web: WebServer | None = None
        self._apply_lock = threading.RLock()
        self._web_file: Path | None = None
        self._pid_file: Path | None = None
        self._ready_sent = False
        self._last_status = ""
        self.started_at = time.time()

    # ------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code."""
        self._install_signal_handlers()
        try:
            with self._wake.signals_wake():
                thread = self._start()
                try:
                    if thread is not None:
                        self._supervise()
                finally:
                    self._shutdown(thread)
        finally:
            self._wake.close()
        return 0

    def _start(self) -> threading.Thread | None:
        """Build the components and start the frame loop; returns its thread, or None when a
        stop was asked for while the slow part (engines, tracker, avatar) was built: then no
        camera, sink or port is opened (systemd may be counting down TimeoutStopSec)."""
        self._pid_file = write_pid_file()
        log.info(
            "starting: %d sink(s), output %dx%d @ %g fps",
            len(self.config.sinks),
            self.config.output.width,
            self.config.output.height,
            self.config.output.fps,
        )
        self.engine = choose_engine(self.config)
        log.info("engines: %s", self.engine)
        engine = self.engine.name
        pipeline = build_pipeline(
            self.config, self.stats, build_generator_or_default(self.config, engine), engine
        )
        if self._stop_requested:
            pipeline.close()
            return None
        capture = self._start_capture(self.config)
        self.sinks.configure(self.config.sinks, self.config.output)
        self.loop = FrameLoop(capture, pipeline, self.sinks, self.config.output.fps, self.stats)
        self._start_web(self.config)
        thread = threading.Thread(
            target=self.loop.run, args=(self._loop_stop,), name="frame-loop", daemon=True
        )
        thread.start()
        return thread

    def _supervise(self) -> None:
        """The main thread's loop until a stop is requested: reloads, calibration, stall
        checks, sd_notify (READY, WATCHDOG, STATUS) and the heap trim."""
        assert self.loop is not None
        last_watchdog = last_status = float("-inf")
        last_trim = time.monotonic()
        last_health: tuple[object, ...] = ()
        while not self._stop_requested:
            self._wake.wait(SUPERVISE_TICK_S)
            if self._stop_requested:
                break
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
                last_trim = float("-inf")  # the old generator and graph are freed now
            if self._calibration_requested:
                self._calibration_requested = False
                self.loop.pipeline.calibrate()
                log.info("calibration requested: the next tracked frame is the neutral face")
            self._apply_test_hooks()
            self.loop.capture.check_stalled()
            self.sinks.check_stalled()
            now = time.monotonic()
            if not self._ready_sent and self.loop.first_frame.is_set():
                self._ready_sent = True
                self._notifier.ready(self.status_line())
                log.info("ready: first frame published")
            if self._watchdog_due(now, last_watchdog) and self.frames_flowing(now):
                self._notifier.watchdog()
                last_watchdog = now
            if now - last_trim >= HEAP_TRIM_INTERVAL_S:
                last_trim = now
                trim_heap()
            health = self._health(now)
            if self._ready_sent and (
                now - last_status >= STATUS_INTERVAL_S or health != last_health
            ):
                last_status, last_health = now, health  # a state change: at once
                self._send_status()

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

    def _shutdown(self, thread: threading.Thread | None) -> None:
        started = time.monotonic()
        self._notifier.stopping()
        self._loop_stop.set()
        if self.loop is not None:  # every thread is told first, then all are waited for
            self.loop.capture.request_stop()
        self.sinks.request_stop()
        self._stop_web()
        deadline = time.monotonic() + SHUTDOWN_WAIT_S  # however many are stuck

        def wait_s(most_s: float) -> float:
            return max(0.0, min(most_s, deadline - time.monotonic()))

        if thread is not None:
            thread.join(wait_s(0.3))
        if self.loop is not None:
            self.loop.capture.close(wait_s(0.2))
        self.sinks.close(max(SINKS_FINISH_S, wait_s(0.3)))
        if self.loop is not None and thread is not None and not thread.is_alive():
            self.loop.pipeline.close()
        remove_pid_file(self._pid_file)
        log.info(
            "stopped in %.2f s after %d frames",
            time.monotonic() - started,
            self.loop.frames_published if self.loop else 0,
        )

    def _install_signal_handlers(self) -> None:
        """Each handler sets a flag and wakes the supervisor: nothing that takes a lock, logs
        or blocks (it may have interrupted the main thread anywhere)."""
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        # SIGQUIT: every thread's stack to stderr (the journal), from C, so even a main thread
        # stuck outside Python says where: what a daemon that will not stop is doing.
        faulthandler.register(signal.SIGQUIT, all_threads=True)
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        signal.signal(signal.SIGUSR1, lambda *_: self.request_calibration())
        if self._stall_signal:
            signal.signal(signal.SIGUSR2, lambda *_: self._toggle_stall())

    def _toggle_stall(self) -> None:
        self._stall_toggles += 1
        self._wake.set()

    def _apply_test_hooks(self) -> None:
        """SIGUSR2 (only with the test support on, daemon/test_support.py) stalls/resumes the
        frame loop: how the tests make the watchdog fire."""
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

    def _health(self, now: float) -> tuple[object, ...]:
        """The states STATUS reports at once when they change (fps only every few seconds)."""
        assert self.loop is not None
        sinks = tuple(s.state for s in self.sinks.statuses())
        return self.loop.capture.state, self.frames_flowing(now), sinks

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
        line = f"{state}; face {face}; {self.stats.fps():.1f} fps; sinks: {sinks or 'none'}"
        if self.web is not None and self.web.url:
            line += f"; web {self.web.url}"
        return line

    def status(self) -> dict[str, Any]:
        """Everything the web page and `talking-head-cam status` show, JSON-ready."""
        loop = self.loop
        now = time.monotonic()
        state = "starting"
        capture: dict[str, Any] = {}
        face = "idle"
        if loop is not None:
            capture = {
                "source": str(loop.capture.spec),
                "state": loop.capture.state,
                "detail": loop.capture.detail,
            }
            state = "live" if loop.capture.state == "streaming" else "idle"
            if loop.external is not None and loop.external.latest(loop.EXTERNAL_STALE_S):
                state = "remote"
            if not self.frames_flowing(now):
                state = "stalled"
            face = loop.pipeline.motion.state
        return {
            "pid": os.getpid(),
            "state": state,
            "line": self.status_line(),
            "face": face,
            "fps": round(self.stats.fps(), 2),
            "frames_published": loop.frames_published if loop else 0,
            "uptime_s": round(time.time() - self.started_at, 1),
            "output": self.config.output.model_dump(),
            "avatar": self.config.avatar.image,
            "engines": (
                {"name": self.engine.name, "reason": self.engine.reason} if self.engine else None
            ),
            "camera": capture,
            "sinks": [
                {
                    "name": s.name,
                    "state": s.state,
                    "detail": s.detail,
                    "frames_written": s.frames_written,
                    "frames_dropped": s.frames_dropped,
                }
                for s in self.sinks.statuses()
            ],
            "stages_ms": {
                name: {"median": round(v.median_ms, 2), "p95": round(v.p95_ms, 2), "n": v.count}
                for name, v in self.stats.summary().items()
            },
        }

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
        except (ConfigError, AvatarError, EngineUnavailable) as exc:
            for line in str(exc).splitlines():
                log.error("reload rejected: %s", line.strip())
            log.error("reload rejected: keeping the current config")
            self._notifier.ready(f"reload rejected (see log); {self.status_line()}")
            return False
        except Exception:  # a bug must not take the camera down with it
            log.exception("reload failed unexpectedly; running on with what was applied")
            self._notifier.ready(f"reload failed (see log); {self.status_line()}")
            return False
        log.info("reloaded %s: %s", path, ", ".join(applied) or "no changes")
        self._notifier.ready(self.status_line())
        return True

    def apply(self, new: Config) -> list[str]:
        """Swap in what changed, keep the rest running (an unchanged virtual camera stays open).
        Raises AvatarError before touching anything when the new avatar cannot be loaded.
        Safe to call from any thread; a change of the `web` section (which restarts the web
        server) only from the main thread."""
        with self._apply_lock:
            old, loop = self.config, self.loop
            assert loop is not None
            changed = [n for n in Config.model_fields if getattr(old, n) != getattr(new, n)]
            pipeline = loop.pipeline
            engine = self.engine
            if {"engines", "engine_cache_dir"} & set(changed) or engine is None:
                engine = choose_engine(new)  # raises before anything changed
            switched = self.engine is None or engine.name != self.engine.name
            rebuild = switched or "engine_cache_dir" in changed
            if rebuild or {"avatar", "output", "generator"} & set(changed):
                pipeline.set_generator(
                    make_generator(new, engine=engine.name), new.output.width, new.output.height
                )
            if rebuild or "tracking" in changed:
                pipeline.set_detector(build_detector(new, engine.name))
            if switched:
                log.info("engines: %s", engine)
            self.engine = engine
            if "motion" in changed:
                pipeline.reconfigure_motion(new.motion)
            if "capture" in changed or own_labels(old) != own_labels(new):
                loop.capture.close(0.2)
                loop.capture = self._start_capture(new)
            if {"sinks", "output"} & set(changed):
                self.sinks.configure(new.sinks, new.output)
            loop.fps = new.output.fps
            if "log_level" in changed:
                logging.getLogger().setLevel(new.log_level.upper())
            self.config = new
            if "web" in changed:
                self._stop_web()
                self._start_web(new)
            elif self.web is not None and changed:
                self.web.config_changed(new, changed)
            return changed

    def update_settings(self, patch: Mapping[str, Any], source: str = "web API") -> list[str]:
        """Lay `patch` (a partial config of the LIVE_SECTIONS) over the running config,
        validate it like a file and apply it. Raises ConfigError (nothing changed) or
        AvatarError. The change lasts until the next reload or restart."""
        unknown = sorted(set(patch) - set(LIVE_SECTIONS))
        if unknown:
            raise ConfigError(
                source,
                [
                    f"{key}: cannot be changed live (only {', '.join(LIVE_SECTIONS)}); "
                    "edit the config file and reload"
                    for key in unknown
                ],
            )
        with self._apply_lock:
            new = validate_config(merge(self.config.model_dump(), patch), source)
            changed = self.apply(new)
        if changed:
            log.info("%s changed %s", source, ", ".join(changed))
        return changed

    # ------------------------------------------------------------ web

    def _start_web(self, config: Config) -> None:
        if not config.web.enabled or self.loop is None:
            return
        from daemon.web import WebServer

        web = WebServer(self, config.web)
        try:
            web.start()
        except OSError as exc:  # the camera matters more than the page: keep running
            log.error(
                "web: cannot listen on %s:%d (%s); the page and WebRTC are off. Choose "
                "another web.port (or stop what uses it) and reload",
                config.web.bind,
                config.web.port,
                exc.strerror or exc,
            )
            return
        self.web = web
        self._web_file = write_web_file(web.url)

    def _stop_web(self) -> None:
        web, self.web = self.web, None
        if web is not None:
            web.stop(0.3)
        remove_web_file(self._web_file)
        self._web_file = None

    def _start_capture(self, config: Config) -> Capture:
        return Capture(
            config.capture, own_labels=own_labels(config), sysfs_root=self._sysfs_root
        ).start()
