"""In the guest (test A): the daemon publishes to the real v4l2loopback device, ffmpeg reads.

Run as root in the chroot init.sh sets up. /e2e/plan.json lists the phases, each a config
written by the host test; per phase the daemon is started, its READY awaited, frames read
back, and it is stopped. Every start after the first meets the device v4l2loopback 0.12.7
leaves stuck when a writer closes, which the daemon must recover from. Writes
/e2e/results.json; the host test judges the frames, formats and rates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from guest_tools import (
    SHARE,
    NotifySocket,
    capture,
    device_caps,
    find_device,
    log,
    start_daemon,
    stop_daemon,
    wait_capturable,
    write_results,
)


def run_phase(plan: dict[str, Any], name: str, config: str, device: str) -> dict[str, Any]:
    """One daemon lifetime: start, READY, capture, stop."""
    notify = NotifySocket(Path("/tmp") / f"{name}.notify")
    log(f"{name}: starting the daemon with {config}")
    started = time.monotonic()
    proc = start_daemon(plan, config, name, notify)
    ready = notify.wait_for("READY=1", plan["ready_timeout_s"], proc)
    phase: dict[str, Any] = {"config": config, "ready": ready is not None}
    if ready is not None:
        phase["ready_s"] = notify.messages[ready][0] - started
        log(f"{name}: READY after {phase['ready_s']:.1f} s")
        phase["capturable_after_ready_s"] = wait_capturable(device, 60)
        phase["capture"] = capture(device, name, plan["frames"])
    phase["stop"] = stop_daemon(proc)
    phase["caps_after_stop"] = device_caps(device)
    phase["notify"] = [text for _, text in notify.messages]
    notify.close()
    return phase


def main() -> int:
    plan = json.loads((SHARE / "plan.json").read_text())
    results: dict[str, Any] = {"kernel": os.uname().release, "phases": {}}
    device = find_device()
    results["device"] = device
    results["list_devices"] = subprocess.run(
        ["v4l2-ctl", "--list-devices"], capture_output=True, text=True
    ).stdout
    if device is not None:
        results["caps_before"] = device_caps(device)
        for name, config in plan["phases"]:
            results["phases"][name] = run_phase(plan, name, config, device)
            write_results(results)  # what is done so far survives a later hang
            if not results["phases"][name]["ready"]:
                break  # the others would wait as long for nothing
    write_results(results)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
