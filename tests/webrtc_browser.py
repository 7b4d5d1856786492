"""Headless Chromium (Debian's /usr/bin/chromium, driven by Selenium through Debian's
chromedriver) with a fake camera that plays a y4m file the test makes; plus helpers to run
a real daemon with its web server and to read frames out of <video> elements via a canvas.

Used by the browser tests (tests/test_web_browser.py) and the round-trip benchmark
(tests/bench_webrtc.py)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MISSING_BROWSER = (
    "needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver): "
    "apt-get install chromium chromium-driver"
)


# Headless, unsandboxed (tests run as root, in containers and the e2e guest), quiet (no
# network of its own), camera permission granted without a prompt, media plays unmuted.
HEADLESS_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
)


def browser_available() -> bool:
    return CHROMIUM.is_file() and CHROMEDRIVER.is_file()


def write_y4m(path: Path, frames: Iterable[np.ndarray], fps: int = 30) -> Path:
    """BGR frames (all one size, even sides) → a YUV4MPEG2 4:2:0 file: Chromium's fake
    camera plays it in a loop."""
    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in (first, *frames):
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def face_on_canvas(face: np.ndarray, width: int = 640, height: int = 480) -> np.ndarray:
    """The face scaled to fill the height of a grey frame, centred (a webcam-like framing)."""
    canvas = np.full((height, width, 3), 96, np.uint8)
    scale = height * 0.9 / face.shape[0]
    small = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    w = min(w, width)
    top, left = (height - h) // 2, (width - w) // 2
    canvas[top : top + h, left : left + w] = small[:, :w]
    return canvas


def rolling_face(face: np.ndarray, frames: int = 60, degrees: float = 14.0) -> list[np.ndarray]:
    """A head that tilts from side to side (one period over `frames`)."""
    base = face_on_canvas(face)
    height, width = base.shape[:2]
    out = []
    for i in range(frames):
        angle = degrees * np.sin(2 * np.pi * i / frames)
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        out.append(cv2.warpAffine(base, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE))
    return out


def chromium(fake_camera: Path | None = None, extra: Iterable[str] = ()) -> Any:
    """A headless Chromium under Selenium, with its own profile; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="thc-chromium-")
    flags = [*HEADLESS_FLAGS, f"--user-data-dir={profile}", *extra]
    if fake_camera is not None:
        flags += [
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={fake_camera}",
        ]
    for flag in flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(30)
    original_quit = driver.quit

    def quit_and_clean() -> None:
        try:
            original_quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    driver.quit = quit_and_clean
    return driver


# JS run in the page: an RGB sample of a <video>'s current frame, downscaled in a canvas.
GRAB_JS = """
const [selector, w, h] = arguments;
const video = typeof selector === 'string' ? document.querySelector(selector) : selector;
if (!video || video.readyState < 2 || !video.videoWidth) return null;
const canvas = document.createElement('canvas');
canvas.width = w; canvas.height = h;
const ctx = canvas.getContext('2d', {willReadFrequently: true});
ctx.drawImage(video, 0, 0, w, h);
return {w: video.videoWidth, h: video.videoHeight, t: performance.now(),
        px: Array.from(ctx.getImageData(0, 0, w, h).data)};
"""


def grab(driver: Any, selector: str, size: tuple[int, int] = (64, 36)) -> np.ndarray | None:
    """The video's current frame as a small BGR image (None until it plays)."""
    got = driver.execute_script(GRAB_JS, selector, *size)
    if got is None:
        return None
    rgba = np.array(got["px"], np.uint8).reshape(size[1], size[0], 4)
    return cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR)


def small(image: np.ndarray, size: tuple[int, int] = (64, 36)) -> np.ndarray:
    """An image downscaled like `grab` does (for comparisons)."""
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def poll(predicate: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.05) -> Any:
    """Bounded polling: the first truthy value of `predicate()`, or AssertionError."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


# ---------------------------------------------------------------- the daemon's web API


def web_url(runtime: Path, timeout_s: float = 30.0, daemon_log: Callable[[], str] | None = None):
    """The URL the daemon wrote to its runtime dir once its web server listens."""
    path = runtime / f"talking-head-cam-{os.getuid()}.web.json"

    def read() -> str | None:
        try:
            return json.loads(path.read_text())["url"]
        except (OSError, ValueError, KeyError):
            return None

    try:
        return poll(read, timeout_s, f"{path}")
    except AssertionError:
        raise AssertionError(f"no web server: {daemon_log() if daemon_log else ''}") from None


def request(
    url: str,
    method: str = "GET",
    body: bytes | dict | list | None = None,
    headers: dict[str, str] | None = None,
    token: str | None = None,
    timeout_s: float = 30.0,
) -> tuple[int, Any]:
    """(status, parsed JSON or bytes) of one HTTP request; errors are answers, not raised."""
    headers = dict(headers or {})
    if isinstance(body, dict | list):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            status, data, kind = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        status, data, kind = exc.code, exc.read(), exc.headers
    if "json" in (kind.get("Content-Type") or ""):
        return status, json.loads(data)
    return status, data


def daemon_command() -> list[str]:
    return [sys.executable, "-m", "daemon"]
