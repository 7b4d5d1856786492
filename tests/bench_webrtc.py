"""Round trip of remote mode on loopback: browser camera frame → avatar frame back.

`make bench-webrtc` (or `python tests/bench_webrtc.py [--seconds S]`). Starts a real daemon
(no camera, null sink, web on a free port, the test support on) and headless
Chromium. The page's camera is a canvas stream: a real face, and below it a 24-bit time
code (the page's clock in ms) as black/white blocks. The daemon's remote session runs each
frame through its pipeline as usual (landmarks → motion → mesh generator) and, with the test
hooks on, copies the time code it read into the bottom strip of the avatar frame it made.
The page decodes it from each avatar frame it presents: round trip = now − time code. The
first seconds (connection, encoder ramp-up) are left out. Prints median and p95.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from webrtc_browser import (
    MISSING_BROWSER,
    browser_available,
    chromium,
    daemon_command,
    face_on_canvas,
    poll,
    request,
    web_url,
)

from engines.generator.avatar import load_avatar

SHARED_FACE = Path(__file__).resolve().parents[2] / "shared/data/avatars/photo_woman_neutral.png"

# The camera: the face in the top 11/12 of a 640x480 canvas, the time code in the bottom
# 1/12 (as thc_testing.timecode.read_timecode expects), redrawn every 10 ms; captured at 30 fps.
PAGE_JS = """
const [faceUrl, seconds, skip] = Array.from(arguments).slice(0, 3);
const done = arguments[arguments.length - 1];
const W = 640, H = 480, BITS = 24, STRIP = Math.round(H / 12);
const face = new Image();
face.src = faceUrl;
await face.decode();
const src = document.createElement('canvas');
src.width = W; src.height = H;
const sx = src.getContext('2d');
sx.drawImage(face, 0, 0, W, H - STRIP);  // once: only the time code changes
function draw() {
  const t = Math.round(performance.now()) & 0xFFFFFF;
  for (let i = 0; i < BITS; i++) {
    sx.fillStyle = (t >> i) & 1 ? '#fff' : '#000';
    sx.fillRect(Math.round(i * W / BITS), H - STRIP, Math.ceil(W / BITS), STRIP);
  }
}
draw();
await THC.ready;
const timer = setInterval(draw, 10);
const t0 = performance.now();
const session = await THC.startRemote(src.captureStream(30));
const tConnected = await new Promise((resolve) => {
  const check = () => session.pc.connectionState === 'connected'
    ? resolve(performance.now() - t0) : setTimeout(check, 5);
  check();
});
const video = document.getElementById('remote');
const rd = document.createElement('canvas');
const rx = rd.getContext('2d', {willReadFrequently: true});
const lat = [];
let tFirst = null, frames = 0;
await new Promise((resolve) => {
  video.requestVideoFrameCallback(function cb() {
    const now = performance.now();
    const w = video.videoWidth, h = video.videoHeight;
    if (w && h) {
      if (tFirst === null) tFirst = now - t0;
      frames++;
      const strip = Math.max(1, Math.round(h / 12));
      if (rd.width !== w) { rd.width = w; rd.height = 1; }
      rx.drawImage(video, 0, h - Math.floor(strip / 2) - 1, w, 1, 0, 0, w, 1);  // one row
      const row = rx.getImageData(0, 0, w, 1).data;
      let code = 0;
      for (let i = 0; i < BITS; i++) {
        const x = Math.floor(i * w / BITS + w / BITS / 2);
        if (row[4 * x] >= 128) code |= 1 << i;
      }
      const ms = ((Math.round(now) & 0xFFFFFF) - code + 0x1000000) & 0xFFFFFF;
      if (now - t0 > skip * 1000 && ms < 5000) lat.push(ms);
    }
    if (now - t0 > (skip + seconds) * 1000) return resolve();
    video.requestVideoFrameCallback(cb);
  });
});
clearInterval(timer);
const size = [video.videoWidth, video.videoHeight];
done({lat, tConnected, tFirst, frames, size, id: session.id});
"""


def face_data_url() -> str:
    face = cv2.imread(str(SHARED_FACE)) if SHARED_FACE.is_file() else None
    if face is None:
        face = load_avatar("default")[:, ::-1]
    ok, png = cv2.imencode(".png", face_on_canvas(face, 640, 440))
    assert ok
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, float), q))


def run(seconds: float, skip: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="thc-bench-webrtc-") as tmp:
        folder = Path(tmp)
        runtime = folder / "run"
        runtime.mkdir()
        config = folder / "config.yaml"
        config.write_text(
            "capture: {source: /dev/video99}\n"
            "output: {width: 640, height: 360, fps: 30}\n"
            "sinks: [{type: 'null'}]\n"
            "web: {port: 0, avatars_dir: gallery}\n"
        )
        env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(runtime),
            "TALKING_HEAD_CAM_TEST_SUPPORT": "thc_testing.plugin",  # copies the time codes
            "PYTHONPATH": str(Path(__file__).resolve().parent),
        }
        log_path = folder / "daemon.log"
        with log_path.open("w") as log:
            daemon = subprocess.Popen(
                [*daemon_command(), "--config", str(config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=folder,
            )
        try:
            url = web_url(runtime, daemon_log=log_path.read_text)
            driver = chromium()
            try:
                driver.set_script_timeout(seconds + skip + 60)
                t_page = time.monotonic()
                driver.get(url)
                poll(lambda: driver.execute_script("return !!window.THC"), 10, "the page")
                if os.environ.get("NOPREV"):
                    driver.execute_script("window.BENCH_NO_PREVIEW = 1")
                result = driver.execute_async_script(
                    "(async () => {"
                    + PAGE_JS
                    + "})().catch(e => arguments[3]({error: String(e)}))",
                    face_data_url(),
                    seconds,
                    skip,
                )
                if "error" in result:
                    raise RuntimeError(f"page: {result['error']}")
                result["page_s"] = time.monotonic() - t_page
                status = request(url + "api/status")[1]
                result["peer"] = next(p for p in status["peers"] if p["id"] == result["id"])
                result["daemon_stages"] = status["stages_ms"]
            finally:
                driver.quit()
        finally:
            daemon.terminate()
            daemon.wait(10)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--skip", type=float, default=3.0, help="seconds left out at the start")
    parser.add_argument("--json", action="store_true", help="print the raw result too")
    args = parser.parse_args()
    if not browser_available():
        print(f"bench-webrtc: skipped: {MISSING_BROWSER}")
        return 0
    result = run(args.seconds, args.skip)
    lat = result["lat"]
    if not lat:
        print("bench-webrtc: no avatar frame carried a time code", file=sys.stderr)
        return 1
    peer = result["peer"]
    print(f"remote mode round trip (browser camera frame → avatar frame), {os.cpu_count()} cores")
    print(
        f"  {len(lat)} frames over {args.seconds:g} s: median {percentile(lat, 50):.0f} ms, "
        f"p95 {percentile(lat, 95):.0f} ms, min {min(lat):.0f}, max {max(lat):.0f}"
    )
    print(
        f"  connected {result['tConnected']:.0f} ms and first avatar frame "
        f"{result['tFirst']:.0f} ms after the page asked; avatar video "
        f"{result['size'][0]}x{result['size'][1]}, {result['frames']} frames presented"
    )
    server = peer.get("server_ms") or {"median": float("nan"), "p95": float("nan")}
    print(
        f"  in the daemon (frame received → avatar frame ready): median {server['median']:.1f} "
        f"ms, p95 {server['p95']:.1f} ms; camera frames in {peer['frames_in']}, dropped "
        f"{peer['frames_dropped']}, sent {peer['frames_sent']}"
    )
    stages = ", ".join(
        f"{name} {v['median']:.1f}/{v['p95']:.1f}" for name, v in peer["stages_ms"].items()
    )
    print(f"  its stages (median/p95 ms): {stages}")
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
