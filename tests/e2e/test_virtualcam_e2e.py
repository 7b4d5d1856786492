"""Test A: the virtual camera on a real kernel with the real v4l2loopback module.

One guest boot (QEMU, see guest.py) runs guest_virtualcam.py: the daemon, with a real config
and `device: auto`, publishes the avatar while its camera plays a video of another person;
ffmpeg in the guest reads the device as any V4L2 client would. Per pixel format (I420,
YUYV), once more after a stop (v4l2loopback 0.12.7 gets stuck after a writer closes), and
once with no camera at all (nothing slows the frame loop).

Rates and stop times under emulation on a shared machine are measurements, reported (pytest
-s, and PHASE.rate.json beside results.json), not judged: what is judged holds on any machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import unit_seconds
from guest import E2E_DIR, REPO, guest_or_skip
from media import (
    FFMPEG_PIX_FMT,
    FPS,
    HEIGHT,
    V4L2_FOURCC,
    WIDTH,
    assert_shows_the_avatar,
    avatar_frame,
    camera_clip,
    camera_frames,
    daemon_config,
    load_capture,
)

FRAMES = 45  # three seconds at 15 fps
BOOT_TIMEOUT_S = 900
# phase → (pixel format, camera): "restart" starts the I420 config again after the YUYV
# daemon stopped; "no-camera" has none (the idle avatar), so nothing holds the loop up.
PHASES = {
    "I420": ("I420", "/e2e/camera.mp4"),
    "YUYV": ("YUYV", "/e2e/camera.mp4"),
    "restart": ("I420", "/e2e/camera.mp4"),
    "no-camera": ("YUYV", "/dev/video99"),
}
WITH_CAMERA = [name for name, (_, camera) in PHASES.items() if camera.endswith(".mp4")]
# The frame loop never bursts (a frame more than a period late starts the schedule afresh)
# and the sink writes only the newest frame, so however busy the machine (which only slows
# the loop) N frames read back span at least N - 1 - CATCH_UP_PERIODS periods (of their
# write times: media.Capture.write_times_s).
CATCH_UP_PERIODS = 6


class GuestRun:
    """One boot's shared folder and what the guest wrote there."""

    def __init__(self, share: Path, version: str):
        self.share, self.loopback_version = share, version
        self.results = json.loads((share / "results.json").read_text())
        self.camera = camera_frames(share / "camera.mp4")

    def phase(self, name: str) -> dict:
        assert name in self.results["phases"], f"the guest did not run {name}"
        return self.results["phases"][name]

    def daemon_log(self, name: str) -> str:
        return (self.share / f"{name}.daemon.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def run(tmp_path_factory, other_face) -> GuestRun:
    guest = guest_or_skip()
    share = tmp_path_factory.mktemp("virtualcam")
    camera_clip(share / "camera.mp4", other_face)
    for name, (fmt, camera) in PHASES.items():
        (share / f"{name}.yaml").write_text(daemon_config(camera, fmt))
    plan = {
        "python": sys.executable,
        "repo": str(REPO),
        "frames": FRAMES,
        "ready_timeout_s": 300,
        "phases": [[name, f"/e2e/{name}.yaml"] for name in PHASES],
    }
    (share / "plan.json").write_text(json.dumps(plan))
    job = [sys.executable, str(E2E_DIR / "guest_virtualcam.py")]
    boot = guest.boot(share, "script", job, BOOT_TIMEOUT_S)
    print(f"test A: guest boot and run took {boot.wall_s:.0f} s")
    if (why := boot.failure(share, share / "results.json")) is not None:
        pytest.fail(why)
    return GuestRun(share, guest.kernel.loopback_version)


def test_readers_find_the_device_by_its_label(run):
    assert run.results["device"] is not None, run.results["list_devices"]
    assert "Talking Head Cam" in run.results["list_devices"]


@pytest.mark.parametrize("phase", PHASES)
def test_the_daemon_gets_ready_and_stops_cleanly(run, phase):
    result = run.phase(phase)
    assert result["ready"], f"no READY=1:\n{run.daemon_log(phase)[-3000:]}"
    # with exclusive_caps=1 the device is a camera only once the first frame is written
    assert result["capturable_after_ready_s"] is not None
    # SIGTERM alone stopped it (the runner kills after STOP_TIMEOUT_S); how long it took is
    # reported with the rate (under systemd, test B: within the unit's TimeoutStopSec)
    assert result["stop"]["rc"] == 0, run.daemon_log(phase)[-3000:]


@pytest.mark.parametrize("phase", WITH_CAMERA)
def test_the_daemon_follows_the_face_on_its_camera(run, phase):
    """The camera is live and its face is tracked: the pipeline really sees a person."""
    log = run.daemon_log(phase)
    assert "Capture(/e2e/camera.mp4): streaming" in log
    assert "face found" in log


@pytest.mark.parametrize("phase", PHASES)
def test_readers_get_the_avatar_in_the_configured_format(run, phase):
    fmt = PHASES[phase][0]
    capture = load_capture(run.share, phase)
    assert capture.pix_fmt == FFMPEG_PIX_FMT[fmt]
    assert capture.size == (WIDTH, HEIGHT)
    assert capture.fps == FPS
    assert len(capture.frames) == FRAMES
    v4l2 = (run.share / f"{phase}.v4l2.txt").read_text()
    assert f"Width/Height      : {WIDTH}/{HEIGHT}" in v4l2
    assert f"Pixel Format      : '{V4L2_FOURCC[fmt]}'" in v4l2
    assert_shows_the_avatar(capture.frames, avatar_frame(), run.camera)


@pytest.mark.parametrize("phase", PHASES)
def test_frames_keep_coming_and_never_outpace_the_configured_rate(run, phase):
    """What holds on any machine: readers are told the configured rate; every frame asked for
    came (ffmpeg ended by itself), each written later than the one before (none repeated or
    out of order), none after a gap the watchdog (the unit's WatchdogSec) would restart the
    daemon for, and never more of them than the configured rate allows (a busy machine only
    slows the loop). How fast they came is reported, not judged: under emulation on a shared
    machine it is a benchmark figure. (The first frames' timestamps may be the reader's
    buffer request's, not their write's: media.LOOPBACK_BUFFERS.)"""
    v4l2 = (run.share / f"{phase}.v4l2.txt").read_text()
    assert f"Frames per second: {FPS:.3f} ({FPS}/1)" in v4l2  # what readers are told
    result, capture = run.phase(phase), load_capture(run.share, phase)
    written = capture.write_times_s
    intervals = np.diff(written)
    figures = {
        "phase": phase,
        "configured_fps": FPS,
        "frames": len(capture.pts_s),
        "first_timestamps_s": [round(t, 6) for t in capture.pts_s[:3]],
        "mean_fps": round(capture.mean_fps, 2),
        "paced_fps": round(capture.paced_fps(FPS), 2),  # between tracking stalls
        "longest_gap_s": round(float(intervals.max()), 3) if intervals.size else None,
        "stop_s": round(result["stop"]["stop_s"], 2),
    }
    (run.share / f"{phase}.rate.json").write_text(json.dumps(figures) + "\n")
    print(
        f"{phase}: {figures['mean_fps']} fps on average, {figures['paced_fps']} between stalls"
        f" ({FPS} configured), longest gap {figures['longest_gap_s']} s,"
        f" stopped in {figures['stop_s']} s"
    )

    assert result["capture"]["rc"] == 0, "ffmpeg did not get its frames"
    assert len(capture.pts_s) == FRAMES
    assert (intervals > 0).all(), f"timestamps repeat or go back: {written}"
    watchdog_s = unit_seconds("WatchdogSec", "talking-head-cam-system.service")
    assert intervals.max() < watchdog_s, f"a gap the watchdog would restart for: {figures}"
    most = FPS * (len(written) - 1) / (len(written) - 1 - CATCH_UP_PERIODS)
    assert capture.mean_fps <= most, f"faster than {FPS} fps allows: {figures}"


def test_a_restarted_daemon_recovers_the_stuck_device(run):
    """0.12.7 drops both capabilities once the writer closes; the next daemon restores them
    (restore_output_caps) instead of failing to open the device."""
    if not run.loopback_version.startswith("0.12."):
        pytest.skip(f"v4l2loopback {run.loopback_version} does not get stuck")
    stuck = run.phase("YUYV")["caps_after_stop"]
    assert "Video Output" not in stuck.split("Device Caps")[-1], stuck
    assert "is stuck" in run.daemon_log("restart")
    assert run.phase("restart")["ready"]
