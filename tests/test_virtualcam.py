"""The virtual camera sink up to the kernel edge.

The v4l2loopback device itself cannot exist here (no V4L2 in this kernel), so a pyvirtualcam
backend stands in for exactly that edge; device discovery (a fake sysfs tree with a node
file), pixel conversion, the stuck-device retry and the error wording all run for real.
The real device is exercised in the QEMU guest (tests/e2e).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import select
import signal
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest
import pyvirtualcam

from daemon.config import OutputConfig, VirtualCamSinkConfig
from daemon.errors import SinkError
from daemon.frames import OutputFrame
from daemon.sinks import SinkWorker, VirtualCamSink
from daemon.stats import RollingStats

BACKEND = "thc-test-loopback"


class FakeLoopback:
    """Stands in for the kernel device: records what pyvirtualcam would write to it."""

    stuck_opens = 0  # how many opens fail as v4l2loopback 0.12.7 does after a writer closed
    opened: ClassVar[list[dict]] = []
    frames: ClassVar[list[np.ndarray]] = []
    sent = threading.Event()

    def __init__(self, width, height, fps, fourcc, device, **kw):
        if FakeLoopback.stuck_opens:
            FakeLoopback.stuck_opens -= 1
            raise RuntimeError(f"'{device}' is not a video output device")
        self._device, self._fourcc = device, fourcc
        FakeLoopback.opened.append(
            {"size": (width, height), "fps": fps, "device": device, "fourcc": fourcc}
        )

    def send(self, frame):
        FakeLoopback.frames.append(frame.copy())
        FakeLoopback.sent.set()

    def close(self):
        pass

    def device(self):
        return self._device

    def native_fourcc(self):
        return self._fourcc


@pytest.fixture
def loopback(monkeypatch):
    pyvirtualcam.register_backend(BACKEND, FakeLoopback)
    monkeypatch.setattr(VirtualCamSink, "backend", BACKEND)
    FakeLoopback.stuck_opens, FakeLoopback.opened, FakeLoopback.frames = 0, [], []
    FakeLoopback.sent = threading.Event()
    return FakeLoopback


def fake_root(tmp_path: Path, devices: dict[int, str]) -> Path:
    """ROOT/sys with our loopback devices and ROOT/dev with their (file) nodes."""
    sys_dir, dev_dir = tmp_path / "sys", tmp_path / "dev"
    (sys_dir / "class" / "video4linux").mkdir(parents=True)
    (sys_dir / "module" / "v4l2loopback").mkdir(parents=True)
    dev_dir.mkdir()
    for number, label in devices.items():
        real = sys_dir / "devices" / "virtual" / "video4linux" / f"video{number}"
        real.mkdir(parents=True)
        (real / "name").write_text(label + "\n")
        os.symlink(
            f"../../devices/virtual/video4linux/video{number}",
            sys_dir / "class" / "video4linux" / f"video{number}",
        )
        (dev_dir / f"video{number}").write_bytes(b"")
    return sys_dir


OUTPUT = OutputConfig(width=64, height=48, fps=30)


def sink(sysfs: Path, **config) -> VirtualCamSink:
    return VirtualCamSink(VirtualCamSinkConfig(type="virtualcam", **config), OUTPUT, sysfs)


def test_auto_passes_our_labelled_device_explicitly(loopback, tmp_path, face_image):
    sysfs = fake_root(tmp_path, {0: "OBS Virtual Camera", 10: "Talking Head Cam"})
    cam = sink(sysfs)
    cam.open()
    assert loopback.opened == [
        {
            "size": (64, 48),
            "fps": 30,
            "device": str(tmp_path / "dev/video10"),
            "fourcc": pyvirtualcam.camera.encode_fourcc(pyvirtualcam.PixelFormat.I420.value),
        }
    ]
    frame = cv2.resize(face_image, (64, 48))
    cam.write(frame)
    sent = loopback.frames[0]
    assert sent.size == 64 * 48 * 3 // 2
    back = cv2.cvtColor(sent.reshape(72, 64), cv2.COLOR_YUV2BGR_I420)
    assert np.mean(np.abs(back.astype(int) - frame.astype(int))) < 6
    cam.close()
    cam.close()  # close() is safe twice


def test_yuyv_is_sent_as_packed_422(loopback, tmp_path, face_image):
    cam = sink(fake_root(tmp_path, {3: "Talking Head Cam"}), pixel_format="YUYV")
    cam.open()
    assert loopback.opened[0]["fourcc"] == pyvirtualcam.camera.encode_fourcc(
        pyvirtualcam.PixelFormat.YUYV.value
    )
    frame = cv2.resize(face_image, (64, 48))
    cam.write(frame)
    back = cv2.cvtColor(loopback.frames[0].reshape(48, 64, 2), cv2.COLOR_YUV2BGR_YUY2)
    assert np.mean(np.abs(back.astype(int) - frame.astype(int))) < 6


def test_a_stuck_device_is_restored_and_reopened(loopback, tmp_path, caplog):
    loopback.stuck_opens = 1
    cam = sink(fake_root(tmp_path, {10: "Talking Head Cam"}))
    cam.open()
    assert len(loopback.opened) == 1
    assert "is stuck (v4l2loopback 0.12 after a writer closed)" in caplog.text


def test_a_device_that_stays_stuck_says_how_to_fix_it(loopback, tmp_path):
    loopback.stuck_opens = 2
    cam = sink(fake_root(tmp_path, {10: "Talking Head Cam"}))
    with pytest.raises(SinkError, match="reload the module: sudo modprobe -r v4l2loopback"):
        cam.open()


def as_unprivileged_user(action: Callable[[], Any]) -> Any:
    """`action()`'s (JSON) result, run as a user that file permissions apply to.

    Not root: here, as this user. Root (CI): in a forked child that drops to nobody:nogroup
    with no supplementary groups (setresgid/setresuid, what `setpriv --reuid=nobody
    --regid=nogroup --clear-groups` does) and runs the code already imported here: no new
    interpreter, which nobody may not be able to read (a pyenv under /root). Skips only
    when root cannot drop its privileges (no CAP_SETUID/CAP_SETGID)."""
    if os.geteuid() != 0:
        return action()
    uid = _id_or(lambda: pwd.getpwnam("nobody").pw_uid, 65534)
    gid = _id_or(lambda: grp.getgrnam("nogroup").gr_gid, uid)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest, whatever happens
        try:
            os.close(read_end)
            try:
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
            except PermissionError as exc:
                outcome = {"cannot_drop": str(exc)}
            else:
                outcome = {"result": action()}
        except BaseException:
            outcome = {"error": traceback.format_exc()}
        try:
            with os.fdopen(write_end, "w") as out:
                json.dump(outcome, out, default=repr)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        # a hang guard only (the child takes milliseconds): a fork that deadlocked
        ready, _, _ = select.select([pipe], [], [], CHILD_HANG_S)
        text = pipe.read() if ready else None
    if text is None:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert text, f"the unprivileged child died or hung (over {CHILD_HANG_S} s)"
    outcome = json.loads(text)
    if "cannot_drop" in outcome:
        pytest.skip(f"running as root and cannot drop privileges: {outcome['cannot_drop']}")
    assert "error" not in outcome, f"as uid {uid}:\n{outcome.get('error')}"
    return outcome["result"]


CHILD_HANG_S = 60


def _id_or(lookup: Callable[[], int], default: int) -> int:
    try:
        return lookup()
    except KeyError:
        return default


@pytest.mark.parametrize(
    "mode", [0o000, 0o444, 0o222], ids=["no-access", "read-only", "write-only"]
)
def test_no_permission_names_the_video_group(loopback, mode):
    """A node the daemon's user may not open for reading and writing (`crw-rw---- root
    video` to a user outside the group): the sink says how to fix it. As root (CI) the open
    runs as nobody, since root passes every permission check."""
    # not tmp_path: pytest keeps it under a folder only its owner may enter
    with tempfile.TemporaryDirectory(prefix="thc-perm-") as folder:
        root = Path(folder)
        root.chmod(0o755)
        sysfs = fake_root(root, {10: "Talking Head Cam"})
        node = root / "dev" / "video10"

        def open_sink() -> dict[str, Any]:
            try:  # what the kernel says to this user
                os.close(os.open(node, os.O_RDWR))
                refused = False
            except PermissionError:
                refused = True
            try:
                sink(sysfs).open()
            except SinkError as exc:
                return {"uid": os.getuid(), "refused": refused, "error": str(exc)}
            return {"uid": os.getuid(), "refused": refused, "opened": loopback.opened}

        node.chmod(mode)
        denied = as_unprivileged_user(open_sink)
        if not denied["refused"] and os.geteuid() != 0:
            pytest.skip(f"uid {denied['uid']} may open any file: permissions are not enforced")
        assert denied["uid"] != 0 and denied["refused"], denied
        assert "add your user to the 'video' group" in denied.get("error", ""), denied
        assert f"no permission to open {node}" in denied["error"]

        # the same user is let in once the node allows it: what failed above was the node's
        # permission, not a folder that user cannot enter or a file it cannot read
        node.chmod(0o666)
        allowed = as_unprivileged_user(open_sink)
        assert not allowed["refused"] and "error" not in allowed, allowed
        assert [o["device"] for o in allowed["opened"]] == [str(node)]


def test_worker_keeps_retrying_until_the_device_appears(loopback, tmp_path):
    sysfs = fake_root(tmp_path, {})  # module loaded, our device not created yet
    worker = SinkWorker(
        sink(sysfs), VirtualCamSinkConfig(type="virtualcam"), RollingStats(), retry_max_s=0.05
    )
    try:
        frame = OutputFrame(np.zeros((48, 64, 3), np.uint8), None, 0)
        worker.post(frame)
        assert not loopback.sent.wait(0.3)
        assert worker.status().state == "failed"
        assert "no v4l2loopback device is labelled 'Talking Head Cam'" in worker.status().detail
        real = sysfs / "devices" / "virtual" / "video4linux" / "video10"
        real.mkdir(parents=True)
        (real / "name").write_text("Talking Head Cam\n")
        os.symlink(
            "../../devices/virtual/video4linux/video10", sysfs / "class" / "video4linux" / "video10"
        )
        (tmp_path / "dev" / "video10").write_bytes(b"")
        for _ in range(50):  # the worker retries every 0.05 s: bounded wait for the reopen
            worker.post(frame)
            if loopback.sent.wait(0.1):
                break
        assert worker.status().state == "ok"
        assert worker.status().detail == f"publishing to {tmp_path / 'dev/video10'}"
    finally:
        worker.close()
