"""In the guest (test C): the daemon publishes, headless Chromium is the camera's user.

Run as root in the chroot init.sh sets up (the host's root, so the host's /usr/bin/chromium).
The daemon is started with /e2e/browser.yaml and its READY awaited; then Chromium opens
camera_page.html from a small HTTP server on 127.0.0.1 (a secure context, as a call
site's https is), which finds the camera by its label, opens it with getUserMedia and POSTs
the frames it drew back here. Writes /e2e/browser.json (the page's report) and
/e2e/results.json; the host test judges.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from guest_tools import (
    SHARE,
    NotifySocket,
    find_device,
    log,
    start_daemon,
    stop_daemon,
    wait_capturable,
    write_results,
)

PAGE = Path(__file__).resolve().parent / "camera_page.html"


class PageServer(ThreadingHTTPServer):
    """Serves the page at / and takes its report at POST /result (once)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), PageHandler)
        self.report: bytes | None = None
        self.reported = threading.Event()


class PageHandler(BaseHTTPRequestHandler):
    server: PageServer

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/":
            self.send_error(404)  # the favicon
            return
        body = PAGE.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.server.report = self.rfile.read(length)
        self.send_response(204)
        self.end_headers()
        self.server.reported.set()

    def log_message(self, format: str, *args: Any) -> None:
        log(f"page server: {format % args}")


def run_chromium(plan: dict[str, Any]) -> dict[str, Any]:
    """Chromium on the page until the page reports (or `browser_timeout_s` passes)."""
    server = PageServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    query = urllib.parse.urlencode({"label": plan["label"], "frames": plan["frames"]})
    url = f"http://127.0.0.1:{server.server_address[1]}/?{query}"
    argv = [plan["chromium"], *plan["chromium_flags"], "--user-data-dir=/tmp/chromium", url]
    log(f"starting {argv}")
    started = time.monotonic()
    with (SHARE / "chromium.log").open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)
        reported = server.reported.wait(plan["browser_timeout_s"])
        elapsed_s = time.monotonic() - started
        exited = proc.poll()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    server.shutdown()
    log(f"chromium: reported={reported} after {elapsed_s:.1f} s")
    if server.report is not None:
        (SHARE / "browser.json").write_bytes(server.report)
    return {"reported": reported, "report_s": elapsed_s, "exited_early": exited}


def main() -> int:
    plan = json.loads((SHARE / "plan.json").read_text())
    results: dict[str, Any] = {"kernel": os.uname().release}
    device = results["device"] = find_device()
    if device is not None:
        notify = NotifySocket(Path("/tmp/browser.notify"))
        proc = start_daemon(plan, "/e2e/browser.yaml", "browser", notify)
        ready = notify.wait_for("READY=1", plan["ready_timeout_s"], proc)
        results["ready"] = ready is not None
        if ready is not None:
            results["capturable_s"] = wait_capturable(device, 60)
            results["browser"] = run_chromium(plan)
        results["stop"] = stop_daemon(proc)
        notify.close()
    write_results(results)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
