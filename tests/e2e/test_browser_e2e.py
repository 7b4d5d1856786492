"""Test C: a real browser uses the virtual camera, as Meet's and Zoom's web clients do.

One guest boot (QEMU, see guest.py) runs guest_browser.py: the daemon, with a real config
and `device: auto`, publishes the avatar to the real v4l2loopback device while its camera
plays a video of another person; headless Chromium (Chrome's capture stack) lists a video
input labelled "Talking Head Cam", opens it with getUserMedia and draws frames to a canvas
(camera_page.html). The frames it drew are judged as test A judges ffmpeg's: the avatar,
never the camera.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from guest import E2E_DIR, REPO, guest_or_skip
from guest_tools import LABEL
from media import (
    FPS,
    HEIGHT,
    WIDTH,
    assert_shows_the_avatar,
    avatar_frame,
    camera_clip,
    camera_frames,
    daemon_config,
)
from webrtc_browser import CHROMIUM, HEADLESS_FLAGS

FRAMES = 8
BOOT_TIMEOUT_S = 1500
# Chromium's first start under emulation (no KVM) on a shared machine: a few minutes
BROWSER_TIMEOUT_S = 900


class BrowserRun:
    """One boot's shared folder and what the guest and the page wrote there."""

    def __init__(self, share: Path):
        self.share = share
        self.results = json.loads((share / "results.json").read_text())
        self.camera = camera_frames(share / "camera.mp4")
        report = share / "browser.json"
        self.page = json.loads(report.read_text()) if report.exists() else None

    def log(self, name: str) -> str:
        path = self.share / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else f"(no {name})"

    def page_report(self) -> dict:
        """The page's report; fails with why when there is none or the page gave up."""
        browser = self.results.get("browser")
        assert browser is not None, f"the browser never ran:\n{self.log('browser.daemon.log')}"
        assert self.page is not None, (
            f"the page never reported (Chromium ran {browser['report_s']:.0f} s):\n"
            f"{self.log('chromium.log')}"
        )
        assert "error" not in self.page, f"{self.page['error']}; devices: {self.page['devices']}"
        return self.page

    def frames(self) -> list[np.ndarray]:
        """The frames the page drew, decoded from its PNG data URLs (BGR)."""
        decoded = []
        for url in self.page_report()["frames"]:
            header, _, data = url.partition(",")
            assert header == "data:image/png;base64", header
            png = np.frombuffer(base64.b64decode(data), np.uint8)
            decoded.append(cv2.imdecode(png, cv2.IMREAD_COLOR))
        return decoded


@pytest.fixture(scope="module")
def run(tmp_path_factory, other_face) -> BrowserRun:
    guest = guest_or_skip({str(CHROMIUM): "chromium"})
    share = tmp_path_factory.mktemp("browser")
    camera_clip(share / "camera.mp4", other_face)
    (share / "browser.yaml").write_text(daemon_config("/e2e/camera.mp4", "I420"))
    plan = {
        "python": sys.executable,
        "repo": str(REPO),
        "ready_timeout_s": 300,
        "chromium": str(CHROMIUM),
        "chromium_flags": list(HEADLESS_FLAGS),
        "label": LABEL,
        "frames": FRAMES,
        "browser_timeout_s": BROWSER_TIMEOUT_S,
    }
    (share / "plan.json").write_text(json.dumps(plan))
    job = [sys.executable, str(E2E_DIR / "guest_browser.py")]
    boot = guest.boot(share, "script", job, BOOT_TIMEOUT_S)
    print(f"test C: guest boot and run took {boot.wall_s:.0f} s")
    if (why := boot.failure(share, share / "results.json")) is not None:
        pytest.fail(why)
    run = BrowserRun(share)
    if "browser" in run.results:
        steps = (run.page or {}).get("steps", {})
        print(f"test C: Chromium's part {run.results['browser']['report_s']:.0f} s, {steps}")
    return run


def test_the_daemon_publishes_while_the_browser_reads(run):
    assert run.results["device"] is not None
    assert run.results["ready"], f"no READY=1:\n{run.log('browser.daemon.log')}"
    assert run.results["capturable_s"] is not None
    assert run.results["stop"]["rc"] == 0, run.log("browser.daemon.log")


def test_chromium_lists_the_camera_by_its_label(run):
    """enumerateDevices, as a call site's camera menu does: a video input named for us."""
    devices = run.page_report()["devices"]
    assert {"kind": "videoinput", "label": LABEL} in devices, devices


def test_chromium_opens_it_in_the_configured_size_and_rate(run):
    track = run.page_report()["track"]
    assert track["label"] == LABEL
    settings = track["settings"]
    assert (settings["width"], settings["height"], settings["frameRate"]) == (WIDTH, HEIGHT, FPS)


def test_the_frames_chromium_draws_are_the_avatar_never_the_camera(run):
    frames = run.frames()
    assert len(frames) == FRAMES
    assert all(frame.shape == (HEIGHT, WIDTH, 3) for frame in frames)
    assert_shows_the_avatar(frames, avatar_frame(), run.camera)
