"""The daemon as a real process: sd_notify over a real socket, real signals, real files."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    TEST_SUPPORT,
    expected_still,
    face_x,
    mean_abs_diff,
    mesh_rest_frame,
    read_video,
    unit_seconds,
    write_video,
)

SIZE = (320, 240)
WATCHDOG = {"WATCHDOG_USEC": "3000000"}  # pings every second while frames flow


def config_text(source: str, *sinks: Path, extra: str = "", generator: str = "still") -> str:
    """The daemon's mechanics are tested with the `still` generator (the avatar as it is,
    exact to compare); the mesh generator has its own end-to-end test below."""
    sink_lines = "".join(f"  - {{type: file, path: {p}}}\n" for p in sinks)
    return (
        f"capture: {{source: {source}, retry_max_s: 0.5}}\n"
        f"output: {{width: {SIZE[0]}, height: {SIZE[1]}, fps: 20}}\n"
        f"generator: {{type: {generator}}}\n"
        f"sinks:\n{sink_lines}  - {{type: 'null'}}\n{extra}"
    )


def wait_for_pings(notify_socket, count: int, after: int) -> int:
    """Index of the count-th WATCHDOG=1 after `after` (pings come once a second)."""
    for _ in range(count):
        after = notify_socket.wait_for("WATCHDOG=1", after=after) + 1
    return after - 1


def assert_all_avatar(frames, avatar, camera=None):
    still = expected_still(avatar, *SIZE)
    assert frames, "no frames were published"
    for frame in frames:
        assert mean_abs_diff(frame, still) < 6
        if camera is not None:
            assert mean_abs_diff(frame, camera) > 30


def test_camera_missing_at_start_keeps_publishing_to_a_file(
    start_daemon, notify_socket, tmp_path, face_image
):
    out = tmp_path / "live.mp4"
    daemon = start_daemon(config_text("/dev/video99", out), env=WATCHDOG)
    ready = notify_socket.wait_for("READY=1")
    assert "capture missing" in notify_socket.texts()[ready]
    # pings come only while frames flow (one within the last second): two a second apart
    # need a frame published after READY (which itself came after the first frame)
    wait_for_pings(notify_socket, 2, after=ready)
    assert daemon.stop() == 0
    frames, fps = read_video(out)
    published = int(re.search(r"stopped in [\d.]+ s after (\d+) frames", daemon.log())[1])
    print(f"published {published} frames, {len(frames)} in the file")  # how many: load's
    assert fps == 20 and frames and published >= 2
    assert_all_avatar(frames, face_image)
    log = daemon.log()
    assert log.count("Capture(/dev/video99): missing: /dev/video99 does not exist") == 1
    assert "retrying" in log


def test_camera_frames_are_never_published(
    start_daemon, notify_socket, tmp_path, face_image, other_face
):
    clip = write_video(tmp_path / "camera.mp4", other_face, frames=30, fps=30, size=SIZE)
    out = tmp_path / "live.mp4"
    daemon = start_daemon(config_text(str(clip), out), env=WATCHDOG)
    ready = notify_socket.wait_for("READY=1")
    notify_socket.wait_for("live;", after=ready)  # the camera really is streaming
    wait_for_pings(notify_socket, 2, after=ready)
    assert daemon.stop() == 0
    camera = read_video(clip)[0][0]
    assert_all_avatar(read_video(out)[0], face_image, camera=camera)


def test_the_animated_avatar_is_published_never_the_camera(
    start_daemon, notify_socket, tmp_path, other_face
):
    """The default (mesh) generator end to end: a real face on the camera animates the
    avatar; every published frame is the avatar, none is (close to) a camera frame, and the
    avatar's head moves as the camera's face drifts sideways."""
    clip = write_video(tmp_path / "camera.mp4", other_face, frames=30, fps=30, size=SIZE)
    out = tmp_path / "live.mp4"
    daemon = start_daemon(config_text(str(clip), out, generator="mesh"), env=WATCHDOG)
    ready = notify_socket.wait_for("READY=1")
    notify_socket.wait_for("face tracked", after=ready)
    wait_for_pings(notify_socket, 2, after=ready)
    assert daemon.stop() == 0
    rest = mesh_rest_frame(*SIZE)
    camera = read_video(clip)[0]
    frames = read_video(out)[0]
    assert len(frames) >= 10
    for frame in frames:  # the whole person slides with the camera face (seen 20 from the
        to_camera = min(mean_abs_diff(frame, c) for c in camera)  # rest frame), yet stays
        assert to_camera > 30  # far nearer to it than to any camera frame
        assert mean_abs_diff(frame, rest) < 0.5 * to_camera
    # Which camera frame each published frame followed is up to the live loop's timing, so
    # the head's sideways travel is checked, not its timing: a frozen avatar stays put.
    moved = np.ptp(face_x(frames))
    assert moved > 3, f"the avatar's head moved {moved:.1f} px"  # seen 14


def test_bad_avatar_file_falls_back_to_the_default_and_keeps_running(
    start_daemon, notify_socket, tmp_path, face_image
):
    out = tmp_path / "live.mp4"
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    daemon = start_daemon(config_text("/dev/video99", out, extra="avatar: {image: broken.png}\n"))
    notify_socket.wait_for("READY=1")
    assert daemon.stop() == 0
    assert "broken.png is not a readable image; use a PNG or JPEG file" in daemon.log()
    assert_all_avatar(read_video(out)[0], face_image)


def test_sighup_applies_a_good_config_and_keeps_the_old_on_a_bad_one(
    start_daemon, notify_socket, tmp_path
):
    first, second = tmp_path / "a.mp4", tmp_path / "b.mp4"
    daemon = start_daemon(config_text("/dev/video99", first), env=WATCHDOG)
    config = tmp_path / "config.yaml"
    ready = notify_socket.wait_for("READY=1")

    config.write_text(config_text("/dev/video99", first, second))
    daemon.signal(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING=1", after=ready)
    reloaded = notify_socket.wait_for("READY=1", after=reloading)
    assert "reload rejected" not in notify_socket.texts()[reloaded]

    config.write_text("output: {fps: fast}\nsinks: [{type: file}]\n")
    daemon.signal(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING=1", after=reloaded)
    rejected = notify_socket.wait_for("READY=1", after=reloading)
    assert "reload rejected" in notify_socket.texts()[rejected]
    notify_socket.wait_for("WATCHDOG=1", after=rejected)  # still publishing
    assert daemon.proc.poll() is None

    assert daemon.stop() == 0
    log = daemon.log()
    assert "reloaded" in log and "sinks" in log
    assert "reload rejected: output.fps: Input should be a valid number" in log
    assert "reload rejected: sinks.0.path: required but missing" in log
    assert "reload rejected: keeping the current config" in log
    assert len(read_video(second)[0]) >= 1  # the sink added by the good reload published
    frames_first = read_video(first)[0]
    assert len(frames_first) > len(read_video(second)[0])  # the first sink was kept running


def test_sigterm_stops_cleanly_before_systemd_would_kill_it(start_daemon, notify_socket, tmp_path):
    """Gone by itself, exit code 0, within the units' TimeoutStopSec (after which systemd
    kills it); how long it took is printed (-s), not judged against a margin of our own."""
    out = tmp_path / "live.mp4"
    daemon = start_daemon(config_text("/dev/video99", out))
    notify_socket.wait_for("READY=1")
    limit_s = unit_seconds("TimeoutStopSec")
    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)
    daemon.proc.wait(limit_s + 5)  # a hang guard (raises); slower than the limit fails below
    took = time.monotonic() - sent
    print(f"gone {took:.2f} s after SIGTERM")
    assert daemon.proc.returncode == 0
    assert took < limit_s, f"stopping took {took:.2f} s: systemd would have killed it"
    assert notify_socket.wait_for("STOPPING=1") == len(notify_socket.texts()) - 1
    assert "stopped in" in daemon.log()
    assert len(read_video(out)[0]) >= 1  # the file sink was closed properly (readable mp4)


def test_sd_notify_messages_arrive_in_order_and_watchdog_stops_on_a_stall(
    start_daemon, notify_socket, tmp_path
):
    daemon = start_daemon(config_text("/dev/video99"), env={**WATCHDOG, **TEST_SUPPORT})
    ready = notify_socket.wait_for("READY=1")
    assert ready == 0, "READY=1 must be the first message"
    assert "STATUS=" in notify_socket.texts()[0]
    first_ping = notify_socket.wait_for("WATCHDOG=1", after=ready)

    daemon.signal(signal.SIGUSR2)  # test hook: the frame loop stops publishing
    stalled = notify_socket.wait_for("STATUS=stalled", after=first_ping)
    window_end = time.monotonic() + 1.5  # 1.5 ping intervals of observation
    while time.monotonic() < window_end:
        assert "WATCHDOG=1" not in notify_socket.texts()[stalled:]
        time.sleep(0.05)

    daemon.signal(signal.SIGUSR2)  # resume: pings come back
    notify_socket.wait_for("WATCHDOG=1", after=stalled)
    assert daemon.stop() == 0
    texts = notify_socket.texts()
    assert texts[-1] == "STOPPING=1"
    assert texts.count("STOPPING=1") == 1
    assert "test hook: frame loop stalled" in daemon.log()


def test_calibrate_command_reaches_the_running_daemon(
    start_daemon, notify_socket, tmp_path, face_image
):
    clip = write_video(tmp_path / "face.mp4", face_image, frames=30, fps=30, size=(300, 350))
    runtime = tmp_path / "run"
    runtime.mkdir()
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    # web port 0 and the CLI on this config: no other daemon on the machine (a suite running
    # beside this one) is reached through the default port, before or after this one stops
    daemon = start_daemon(config_text(str(clip), extra="web: {port: 0}\n"), env=env)
    calibrate = [sys.executable, "-m", "daemon", "calibrate", "--config", str(daemon.config)]
    ready = notify_socket.wait_for("READY=1")
    notify_socket.wait_for("face tracked", after=ready)
    assert (runtime / f"talking-head-cam-{os.getuid()}.pid").read_text().strip() == str(
        daemon.proc.pid
    )
    result = subprocess.run(
        calibrate,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert f"asked the daemon (pid {daemon.proc.pid}) to calibrate" in result.stdout
    deadline = time.monotonic() + 10
    while "neutral face calibrated (requested)" not in daemon.log():
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    assert daemon.stop() == 0
    assert not (runtime / f"talking-head-cam-{os.getuid()}.pid").exists()

    result = subprocess.run(
        calibrate,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )
    assert result.returncode == 1
    assert "the daemon is not running" in result.stderr


def test_engines_auto_runs_the_cpu_path_here_and_says_why(start_daemon, notify_socket, tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("an NVIDIA driver is installed here: auto may pick a GPU engine")
    daemon = start_daemon(config_text("/dev/video99", tmp_path / "out.mp4"))
    notify_socket.wait_for("READY=1")
    assert daemon.stop() == 0
    log = daemon.log()
    assert "engines: cpu (auto: no NVIDIA GPU: nvidia-smi not found" in log, log
    assert "not tried without an NVIDIA GPU" in log  # torch is not even imported without one


def test_engines_cuda_without_a_gpu_is_a_one_line_error_and_exit_2(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("an NVIDIA driver is installed here: engines: cuda may run")
    config = tmp_path / "config.yaml"
    config.write_text(config_text("/dev/video99", extra="engines: cuda\n"))
    proc = subprocess.run(
        [sys.executable, "-m", "daemon", "--config", str(config), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NOTIFY_SOCKET": ""},
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "engines: cuda needs" in line]
    assert len(errors) == 1, proc.stderr
    assert "set engines: auto (or cpu) in the config" in errors[0]


def test_a_reload_to_unavailable_engines_is_rejected_and_the_camera_runs_on(
    start_daemon, notify_socket, tmp_path
):
    if shutil.which("nvidia-smi"):
        pytest.skip("an NVIDIA driver is installed here: engines: tensorrt may run")
    out = tmp_path / "out.mp4"
    daemon = start_daemon(config_text("/dev/video99", out), env=WATCHDOG)
    ready = notify_socket.wait_for("READY=1")
    (tmp_path / "config.yaml").write_text(
        config_text("/dev/video99", out, extra="engines: tensorrt\n")
    )
    daemon.signal(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING=1", after=ready)
    rejected = notify_socket.wait_for("READY=1", after=reloading)
    assert "reload rejected" in notify_socket.texts()[rejected]
    notify_socket.wait_for("WATCHDOG=1", after=rejected)  # still publishing
    assert daemon.stop() == 0
    assert "reload rejected: engines: tensorrt needs TensorRT 10" in daemon.log()
