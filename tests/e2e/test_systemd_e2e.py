"""Test B: the real system unit under systemd as PID 1, on a real kernel with v4l2loopback.

One guest boot (QEMU, see guest.py) with systemd on a tmpfs overlay of the host's root runs
guest_systemd.py as root: it starts systemd/talking-head-cam-system.service (installed as
talking-head-cam.service, the binary linked from /usr/local/bin as the unit expects), reloads
it with a changed config, stalls its frame loop until the watchdog restarts it, kills it with
SIGKILL, stops it, and reads the camera after each step. A test-only drop-in adds the stall
hook and a probe that runs inside the unit's sandbox (guest_probe.py).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from guest import E2E_DIR, REPO, guest_or_skip
from media import (
    FFMPEG_PIX_FMT,
    assert_shows_the_avatar,
    avatar_frame,
    camera_clip,
    camera_frames,
    daemon_config,
    load_capture,
)

SYSTEM_UNIT = REPO / "systemd" / "talking-head-cam-system.service"
UNIT = "talking-head-cam.service"
UNIT_BINARY = "usr/local/bin/talking-head-cam"  # where the unit's ExecStart looks
CONFIG_DIR = "etc/talking-head-cam"
FRAMES = 30
BOOT_TIMEOUT_S = 1200
START_TIMEOUT_S = 240  # the unit's 90 s is for real hardware
VIDEO_GID = 44  # Debian's `video` group
# Where the unit hides the file system (ProtectHome=, PrivateTmp=): an interpreter, venv or
# checkout there would be invisible to the service, on this host only.
HOME_DIRS = ("/home", "/root", "/run/user")
TMP_DIRS = ("/tmp", "/var/tmp")


def hidden_paths(paths: list[Path]) -> list[Path]:
    """The outermost of `paths` that lie under a directory the unit hides."""
    hidden = sorted(p for p in paths if any(p.is_relative_to(d) for d in HOME_DIRS + TMP_DIRS))
    return [p for i, p in enumerate(hidden) if not any(p.is_relative_to(q) for q in hidden[:i])]


def unit_dropin() -> str:
    """The test's additions to the unit: the test support (daemon/test_support.py: SIGUSR2
    stalls the frame loop), the sandbox probe, more time to start (a cold start under
    emulation takes 30-90 s); and, only where this host keeps Python or the checkout
    somewhere the unit hides, those paths shown read-only (home directories as an empty
    tmpfs)."""
    lines = [
        "# Test-only, written by tests/e2e/test_systemd_e2e.py",
        "[Service]",
        "Environment=TALKING_HEAD_CAM_TEST_SUPPORT=thc_testing.plugin",
        f"Environment=PYTHONPATH={REPO / 'tests'}",
        f"ExecStartPost={sys.executable} {E2E_DIR / 'guest_probe.py'}",
        f"TimeoutStartSec={START_TIMEOUT_S}",
    ]
    needed = [sys.base_prefix, sys.prefix, str(REPO), *sys.path]
    hidden = hidden_paths([Path(p).resolve() for p in needed if p and Path(p).is_dir()])
    if any(p.is_relative_to(d) for p in hidden for d in HOME_DIRS):
        lines.append("ProtectHome=tmpfs")
    lines += [f"BindReadOnlyPaths={p}" for p in hidden]
    return "\n".join(lines) + "\n"


def write_tree(root: Path, files: dict[str, str | Path]) -> None:
    """Files copied over the guest's root by init.sh: text, a file to copy, or a link."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        elif name == UNIT_BINARY:
            path.symlink_to(content)
        else:
            shutil.copyfile(content, path)
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


class GuestRun:
    def __init__(self, share: Path):
        self.share = share
        self.results = json.loads((share / "results.json").read_text())
        self.journal = (share / "journal.txt").read_text(errors="replace")
        self.camera = camera_frames(share / "camera.mp4")

    def step(self, name: str) -> dict:
        step = self.results.get(name)
        assert step is not None, f"the guest did not get to {name}"
        assert "error" not in step, step["error"]
        return step

    def assert_camera_shows_the_avatar(self, step: str, pixel_format: str) -> None:
        camera = self.step(step)["camera"]
        assert camera["capturable_s"] is not None, "the device never became a camera again"
        assert camera["rc"] == 0
        capture = load_capture(self.share, step)
        assert capture.pix_fmt == FFMPEG_PIX_FMT[pixel_format]
        assert len(capture.frames) == FRAMES
        assert_shows_the_avatar(capture.frames, avatar_frame(), self.camera)


@pytest.fixture(scope="module")
def run(tmp_path_factory, other_face) -> GuestRun:
    guest = guest_or_skip()
    share = tmp_path_factory.mktemp("systemd")
    clip = camera_clip(share / "camera.mp4", other_face)
    camera = f"/{CONFIG_DIR}/camera.mp4"
    units = E2E_DIR / "systemd"
    write_tree(
        share / "root",
        {
            "etc/systemd/system/e2e.target": units / "e2e.target",
            "etc/systemd/system/e2e-runner.service": units / "e2e-runner.service",
            f"etc/systemd/system/{UNIT}": SYSTEM_UNIT,
            f"etc/systemd/system/{UNIT}.d/e2e.conf": unit_dropin(),
            UNIT_BINARY: Path(sys.executable).parent / "talking-head-cam",
            f"{CONFIG_DIR}/config.yaml": daemon_config(camera, "I420"),
            f"{CONFIG_DIR}/camera.mp4": clip,
        },
    )
    plan = {"frames": FRAMES, "reload_config": daemon_config(camera, "YUYV")}
    (share / "plan.json").write_text(json.dumps(plan))
    job = [sys.executable, str(E2E_DIR / "guest_systemd.py")]
    boot = guest.boot(share, "systemd", job, BOOT_TIMEOUT_S)
    print(f"test B: guest boot and run took {boot.wall_s:.0f} s")
    if (why := boot.failure(share, share / "journal.txt")) is not None:
        pytest.fail(why)
    return GuestRun(share)


def test_systemd_is_pid_1(run):
    assert run.results["pid1"] == "systemd"
    assert run.results["device"] is not None


def test_the_unit_is_active_only_after_ready(run):
    """Type=notify: `activating` while the daemon starts, `active` once it sent READY=1
    (with its status line), then the camera works."""
    start = run.step("start")
    assert start["start_s"] is not None, f"never active:\n{run.journal[-3000:]}"
    first, last = start["timeline"][0], start["timeline"][-1]
    assert first[1:] == ["activating", "start"], start["timeline"]
    assert last[1:] == ["active", "running"], start["timeline"]
    assert start["props"]["StatusText"], "no STATUS= came with READY=1"
    assert "ready: first frame published" in run.journal
    assert start["props"]["WatchdogUSec"] == "10s"
    run.assert_camera_shows_the_avatar("start", "I420")


def test_reload_applies_the_changed_config_in_the_same_process(run):
    reload = run.step("reload")
    assert reload["rc"] == 0, reload["stderr"]
    assert reload["applied_s"] is not None, run.journal[-3000:]
    assert reload["after"]["MainPID"] == reload["before"]["MainPID"]
    assert reload["after"]["NRestarts"] == reload["before"]["NRestarts"]
    assert reload["after"]["ActiveState"] == "active"
    run.assert_camera_shows_the_avatar("reload", "YUYV")  # the config's new pixel format


def test_a_stalled_frame_loop_is_restarted_by_the_watchdog(run):
    step = run.step("watchdog")
    assert step["back_s"] is not None, run.journal[-3000:]
    assert "test hook: frame loop stalled" in run.journal
    assert "Watchdog timeout" in run.journal
    assert "Failed with result 'watchdog'" in run.journal
    run.assert_camera_shows_the_avatar("watchdog", "YUYV")


def test_kill_9_is_restarted(run):
    step = run.step("kill")
    assert step["back_s"] is not None, run.journal[-3000:]
    assert "status=9/KILL" in run.journal
    run.assert_camera_shows_the_avatar("kill", "YUYV")


def test_stop_is_clean(run):
    stop = run.step("stop")
    assert stop["rc"] == 0
    after = stop["after"]
    assert (after["ActiveState"], after["Result"]) == ("inactive", "success")
    # the daemon exited 0 by itself: systemd did not kill it after the unit's TimeoutStopSec
    # (that Result would be "timeout"). How long `systemctl stop` took under emulation is
    # reported, not judged.
    assert after["ExecMainStatus"] == "0"
    print(f"stop: systemctl stop returned after {stop['stop_s']:.2f} s")


def test_the_hardening_applies_inside_the_service(run):
    """What the unit promises, checked from inside its sandbox (guest_probe.py) and on the
    running daemon: an unprivileged user in `video`, no new privileges, no capabilities, a
    syscall filter, a read-only system, and of all devices only video4linux."""
    assert run.results["probes"], f"the probe did not run:\n{run.journal[-3000:]}"
    probe = run.results["probes"][0]
    assert probe["uid"] != 0
    assert VIDEO_GID in probe["groups"]
    assert probe["no_new_privs"] == "1"
    assert int(probe["cap_eff"], 16) == 0
    assert probe["seccomp"] == "2"  # a filter is installed
    assert probe["etc_read_only"]
    assert probe["etc_write"] == probe["usr_write"] == "EROFS"
    assert probe["state_write"] == "ok"  # StateDirectory= stays writable
    assert probe["video_rw"] == "ok"
    # the device cgroup refuses what it does not list; root outside gets the driver's ENXIO
    assert (probe["unlisted_device"], run.results["unlisted_device_as_root"]) == (
        "EPERM",
        "ENXIO",
    )
    daemon = run.step("start")["main_process"]
    assert daemon["Uid"].split()[0] != "0"
    assert daemon["NoNewPrivs"] == "1"
    assert int(daemon["CapEff"], 16) == 0
