"""In the guest (test B), run by e2e-runner.service as root with systemd as PID 1: drives
the real system unit (systemd/talking-head-cam-system.service, installed as
talking-head-cam.service with the test drop-in) through start, reload, a watchdog timeout,
a kill -9 and a stop, reading the camera back after each. Records what systemd and the
device said in /e2e/results.json; the host test judges.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guest_probe import UNLISTED_DEVICE, open_errno
from guest_tools import SHARE, capture, find_device, log, wait_capturable, write_results

UNIT = "talking-head-cam.service"
CONFIG = Path("/etc/talking-head-cam/config.yaml")
START_TIMEOUT_S = 300  # under emulation the daemon takes 15-60 s to be ready
RESTART_TIMEOUT_S = 300
RELOADED = re.compile(r"reloaded \S+config\.yaml")  # the daemon's log line
PROPS = (
    "ActiveState",
    "SubState",
    "Result",
    "MainPID",
    "NRestarts",
    "StatusText",
    "ExecMainCode",
    "ExecMainStatus",
    "WatchdogUSec",
)


def systemctl(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemctl", *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


def show() -> dict[str, str]:
    out = systemctl("show", UNIT, "-p", ",".join(PROPS)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal() -> str:
    return subprocess.run(
        ["journalctl", "-u", UNIT, "-o", "cat", "--no-pager"], capture_output=True, text=True
    ).stdout


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until `predicate` holds (polled), or None after `timeout_s`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            return None
        time.sleep(0.2)
    return time.monotonic() - started


def prepare_devices(device: str) -> dict[str, Any]:
    """What udev would do (there is none here): the video group may use the camera. And the
    probe's unlisted device, with what root (outside the sandbox) gets opening it."""
    os.chown(device, 0, 44)  # group video
    os.chmod(device, 0o660)
    if not os.path.exists(UNLISTED_DEVICE):
        os.mknod(UNLISTED_DEVICE, 0o666 | 0o020000, os.makedev(60, 0))
    os.chmod(UNLISTED_DEVICE, 0o666)
    return {"unlisted_device_as_root": open_errno(UNLISTED_DEVICE, os.O_RDONLY | os.O_NONBLOCK)}


def read_camera(device: str, name: str, frames: int) -> dict[str, Any]:
    """Wait until the device is a camera again, then read frames from it."""
    waited = wait_capturable(device, 120)
    result: dict[str, Any] = {"capturable_s": waited}
    if waited is not None:
        result.update(capture(device, name, frames))
    return result


def main_process(pid: str) -> dict[str, str]:
    """The daemon's own credentials, as the kernel sees them."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as exc:
        return {"error": str(exc)}
    keep = ("Uid", "Gid", "Groups", "NoNewPrivs", "CapEff", "CapBnd", "Seccomp")
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {key: fields[key].strip() for key in keep if key in fields}


def step_start(device: str, frames: int) -> dict[str, Any]:
    """Start without blocking and watch the states: `activating` until READY=1."""
    started = time.monotonic()
    systemctl("start", "--no-block", UNIT)
    timeline: list[list[Any]] = []

    def settled() -> bool:
        props = show()
        state = [props.get("ActiveState"), props.get("SubState")]
        if not timeline or timeline[-1][1:] != state:
            timeline.append([round(time.monotonic() - started, 2), *state])
        # auto-restart: the start failed (a crash, or no READY=1 within TimeoutStartSec)
        return state[0] in ("active", "failed") or state[1] == "auto-restart"

    waited = wait_until(settled, START_TIMEOUT_S)
    props = show()
    log(f"start: {props.get('ActiveState')} after {waited}")
    result: dict[str, Any] = {"start_s": waited, "timeline": timeline, "props": props}
    if props.get("ActiveState") == "active":
        result["main_process"] = main_process(props["MainPID"])
        result["camera"] = read_camera(device, "start", frames)
    return result


def step_reload(device: str, frames: int, new_config: str) -> dict[str, Any]:
    """Change the config (YUYV instead of I420) and `systemctl reload`: same process,
    the change applied."""
    before = show()
    CONFIG.write_text(new_config)
    reloads = len(RELOADED.findall(journal()))
    done = systemctl("reload", UNIT)
    applied = wait_until(lambda: len(RELOADED.findall(journal())) > reloads, 120)
    wait_until(lambda: show().get("ActiveState") == "active", 60)
    log(f"reload: rc={done.returncode}, applied after {applied}")
    return {
        "rc": done.returncode,
        "stderr": done.stderr,
        "applied_s": applied,
        "before": before,
        "after": show(),
        "camera": read_camera(device, "reload", frames),
    }


def restarted_after(sig: signal.Signals, name: str, device: str, frames: int) -> dict:
    """Send `sig` to the main process; systemd must restart the service (a new PID, one
    more restart) and the camera must work again."""
    before = show()
    systemctl("kill", "-s", sig.name, "--kill-whom=main", UNIT)

    def back() -> bool:
        props = show()
        return (
            int(props.get("NRestarts", "0")) > int(before.get("NRestarts", "0"))
            and props.get("ActiveState") == "active"
            and props.get("MainPID") not in ("0", before.get("MainPID"))
        )

    waited = wait_until(back, RESTART_TIMEOUT_S)
    log(f"{name}: back after {waited} s")
    result = {"back_s": waited, "before": before, "after": show()}
    if waited is not None:
        result["camera"] = read_camera(device, name, frames)
    return result


def step_stop() -> dict[str, Any]:
    started = time.monotonic()
    done = systemctl("stop", UNIT)
    return {"rc": done.returncode, "stop_s": time.monotonic() - started, "after": show()}


def probes(text: str) -> list[dict[str, Any]]:
    """What guest_probe.py printed from inside the sandbox, once per start."""
    return [json.loads(m) for m in re.findall(r"^E2E-PROBE (\{.*\})$", text, re.M)]


def main() -> int:
    plan = json.loads((SHARE / "plan.json").read_text())
    frames = plan["frames"]
    results: dict[str, Any] = {"pid1": Path("/proc/1/comm").read_text().strip()}
    device = find_device()
    results["device"] = device
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("start", lambda: step_start(device, frames)),
        ("reload", lambda: step_reload(device, frames, plan["reload_config"])),
        ("watchdog", lambda: restarted_after(signal.SIGUSR2, "watchdog", device, frames)),
        ("kill", lambda: restarted_after(signal.SIGKILL, "kill", device, frames)),
        ("stop", step_stop),
    ]
    if device is not None:
        results.update(prepare_devices(device))
        for name, step in steps:
            try:
                results[name] = step()
            except Exception as exc:  # record it; the host test of that step fails on it
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            write_results(results)
            if name == "start" and results[name].get("props", {}).get("ActiveState") != "active":
                break  # nothing else can work; the host tests say what is missing
    text = journal()
    results["probes"] = probes(text)
    (SHARE / "journal.txt").write_text(text)
    full = ["journalctl", "-b", "-o", "short-monotonic", "--no-pager"]
    with (SHARE / "journal-boot.txt").open("w") as out:
        subprocess.run(full, stdout=out, check=False)
    write_results(results)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
