"""Shutdown and the systemd watchdog, on the real daemon process: SIGTERM at a random moment
(right after READY, in a reload, while the frame loop, the camera or a sink is stuck) always
ends the process by itself, before the units' TimeoutStopSec (then systemd kills), with exit
code 0, STOPPING=1 last, the file sink finalised and stuck threads left behind (named in the
log); how long it took is printed (-s). The watchdog keeps being fed through camera and sink
faults and stops only when the frame loop itself stalls."""

from __future__ import annotations

import random
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    STOP_HANG_S,
    TEST_SUPPORT,
    NotifySocket,
    read_video,
    unit_seconds,
    write_video,
)
from thc_testing.faults import control_path, set_fault

SIZE = (320, 240)
FPS = 20
HOOKS = TEST_SUPPORT
SEED = random.randrange(2**32)  # in every failure message, to replay a failing moment


def daemon_config(source: str, *sinks: str, extra: str = "") -> str:
    sink_lines = "".join(f"  - {s}\n" for s in sinks)
    return (
        f"capture: {{source: '{source}', retry_max_s: 0.3}}\n"
        f"output: {{width: {SIZE[0]}, height: {SIZE[1]}, fps: {FPS}}}\n"
        "generator: {type: still}\n"
        "web: {enabled: false}\n"
        f"sinks:\n{sink_lines}{extra}"
    )


def stopped_in_time(daemon, notify: NotifySocket, after: int) -> float:
    """SIGTERM now; the seconds until the process was gone (it must also exit 0, with
    STOPPING=1 as its last word)."""
    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)
    daemon.proc.wait(10)
    took = time.monotonic() - sent
    assert daemon.proc.returncode == 0, daemon.log()
    stopping = notify.wait_for("STOPPING=1", after=after, timeout_s=2)
    assert stopping == len(notify.texts()) - 1
    assert notify.texts().count("STOPPING=1") == 1
    assert "stopped in" in daemon.log()
    return took


SCENARIOS = {
    "after ready": (),
    "in a reload": ("reload",),
    "loop stalled": ("loop",),
    "camera stalled": ("camera",),
    "sink blocked": ("sink",),
    "everything stuck": ("camera", "sink", "loop"),  # the longest joins, all at once
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sigterm_at_a_random_moment_stops_cleanly_in_time(
    scenario: str,
    start_daemon,
    notify_socket: NotifySocket,
    tmp_path: Path,
    other_face: np.ndarray,
) -> None:
    rng = random.Random(f"{SEED}-{scenario}")
    delay_s = rng.uniform(0.0, 0.6)
    clip = write_video(tmp_path / "camera.mp4", other_face, frames=30, fps=30, size=SIZE)
    sink_control = tmp_path / "device.ctl"
    out = tmp_path / "live.mp4"
    sinks = [f"{{type: file, path: {out}}}", f"{{type: fault, control: {sink_control.name}}}"]
    text = daemon_config(f"fault:{clip}", *sinks)
    daemon = start_daemon(text, env=HOOKS)
    at = notify_socket.wait_for("READY=1")
    at = notify_socket.wait_for("STATUS=live", after=at)
    for step in SCENARIOS[scenario]:
        if step == "reload":  # a heavy one: new camera, new tracker, new sink
            second = f"{{type: file, path: {tmp_path / 'second.mp4'}}}"
            heavy = daemon_config(
                f"fault:{clip}", *sinks, second, extra="tracking: {max_faces: 1}\n"
            )
            config = heavy.replace("retry_max_s: 0.3", "retry_max_s: 1")
            (tmp_path / "config.yaml").write_text(config)
            daemon.signal(signal.SIGHUP)
            at = notify_socket.wait_for("RELOADING=1", after=at)
            delay_s = rng.uniform(0.0, 0.2)
        elif step == "camera":
            set_fault(control_path(clip), "stall")
            at = notify_socket.wait_for("capture stalled", after=at)
        elif step == "sink":
            set_fault(sink_control, "block")
            at = notify_socket.wait_for("fault(device.ctl) stalled", after=at)
        elif step == "loop":
            daemon.signal(signal.SIGUSR2)
            at = notify_socket.wait_for("STATUS=stalled", after=at)
    time.sleep(delay_s)  # the random moment itself (not synchronisation)
    took = stopped_in_time(daemon, notify_socket, at)
    inside = re.search(r"stopped in ([\d.]+) s", daemon.log())[1]
    print(f"{scenario}: gone {took:.2f} s after SIGTERM, shutdown {inside} s ({delay_s=:.2f})")
    limit_s = unit_seconds("TimeoutStopSec")  # systemd kills after it
    assert took < limit_s, f"{scenario}: stopping took {took:.2f} s (seed {SEED}, {delay_s=:.2f})"
    assert len(read_video(out)[0]) >= 1, "the file sink was not finalised"
    # a thread stuck in a device call is named and left to the process exit; every other
    # thread was joined in time
    stuck = {"sink": "fault(device.ctl): still busy", "camera": "reader still busy"}
    expected = [stuck[step] for step in SCENARIOS[scenario] if step in stuck]
    log = daemon.log()
    assert log.count("still busy") == len(expected), log
    assert all(line in log for line in expected), log


def test_sigterm_while_it_starts_stops_it_cleanly(
    start_daemon, notify_socket: NotifySocket
) -> None:
    """SIGTERM as soon as the daemon says it is starting (its handlers are in, the engines,
    tracker and avatar still being built): it stops by itself, exit code 0, STOPPING=1 its
    last word. Whether it got as far as opening the camera is the machine's speed's (printed)."""
    daemon = start_daemon(daemon_config("/dev/video99", "{type: 'null'}"), env=HOOKS)
    deadline = time.monotonic() + STOP_HANG_S  # a hang guard only
    while "starting:" not in daemon.log():
        assert daemon.proc.poll() is None and time.monotonic() < deadline, daemon.log()
        time.sleep(0.01)
    assert daemon.stop() == 0, daemon.log()
    log = daemon.log()
    assert "stopped in" in log, log
    stopping = notify_socket.wait_for("STOPPING=1")  # the datagram may still be on its way
    assert stopping == len(notify_socket.texts()) - 1, notify_socket.texts()
    print(f"camera opened before the stop: {'Capture(' in log}; ready: {'ready:' in log}")


def test_a_signal_between_any_two_lines_of_the_supervisor_is_acted_on(
    start_daemon, tmp_path: Path
) -> None:
    """SIGUSR1 raised on the main thread at each line it runs for a while (the driver
    thc_testing.signal_everywhere), then SIGTERM: the daemon stops, exit code 0. A handler
    that waits for a lock the interrupted line holds (Event.set inside Event.wait: the CI's
    daemons that ignored SIGTERM) blocks the main thread for good at the first such line."""
    text = daemon_config("/dev/video99", "{type: 'null'}")
    daemon = start_daemon(text, env=HOOKS, module="thc_testing.signal_everywhere")
    deadline = time.monotonic() + STOP_HANG_S  # a hang guard only
    while "signal storm over" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    code = daemon.stop()
    log = daemon.log()
    assert "signal storm over" in log and code == 0, f"hung in the signal storm:\n{log[-4000:]}"
    assert "calibration requested" in log  # the handler's request was acted on
    assert "stopped in" in log


WATCHDOG_S = 1.0


def ping_times(notify: NotifySocket, start: int, end: int | None = None) -> np.ndarray:
    return np.array(
        [t for t, text in notify.messages[start:end] if "WATCHDOG=1" in text.splitlines()]
    )


def test_watchdog_is_fed_through_camera_and_sink_faults_and_stops_on_a_real_stall(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path, other_face: np.ndarray
) -> None:
    clip = write_video(tmp_path / "camera.mp4", other_face, frames=30, fps=30, size=SIZE)
    camera, sink = control_path(clip), tmp_path / "device.ctl"
    daemon = start_daemon(
        daemon_config(f"fault:{clip}", f"{{type: fault, control: {sink.name}}}"),
        env={**HOOKS, "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))},
    )
    ready = notify_socket.wait_for("READY=1")
    at = notify_socket.wait_for("STATUS=live", after=ready)
    for control, word, shown in (
        (camera, "stall", "capture stalled"),
        (camera, "vanish", "capture missing"),
        (camera, "error", "capture lost"),
        (sink, "block", "fault(device.ctl) stalled"),
        (sink, "fail", "fault(device.ctl) failed"),
    ):
        set_fault(control, word)
        at = notify_socket.wait_for(shown, after=at)
        for _ in range(2):  # two more pings with the fault on
            at = notify_socket.wait_for("WATCHDOG=1", after=at + 1)
        set_fault(control, "ok")
    at = notify_socket.wait_for("STATUS=live", after=at)
    at = notify_socket.wait_for("fault(device.ctl) ok", after=at)
    fed_until = at
    gaps = np.diff(ping_times(notify_socket, ready))
    print(f"longest gap between pings: {gaps.max():.2f} s")
    assert gaps.max() < WATCHDOG_S, f"systemd would have killed it: {gaps.max():.2f} s"

    daemon.signal(signal.SIGUSR2)  # the frame loop really stalls
    stalled = notify_socket.wait_for("STATUS=stalled", after=fed_until)
    window_end = time.monotonic() + 2 * WATCHDOG_S  # an observation window of two intervals
    while time.monotonic() < window_end:
        assert ping_times(notify_socket, stalled).size == 0
        time.sleep(0.05)
    last_ping_before = ping_times(notify_socket, ready, stalled)[-1]
    assert notify_socket.messages[stalled][0] - last_ping_before < 1.5  # it stopped at once

    daemon.signal(signal.SIGUSR2)  # resumed: fed again
    notify_socket.wait_for("WATCHDOG=1", after=stalled)
    assert daemon.stop() == 0
    log = daemon.log()
    assert log.count("test hook: frame loop stalled") == 1
    assert log.count("stalled: no new frame for over 1 s") == 1
