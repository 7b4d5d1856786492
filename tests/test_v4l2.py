"""Finding devices in sysfs: a fake tree in tmp_path laid out like the kernel's.

/sys/class/video4linux/videoN are symlinks into /sys/devices: real cameras hang under their
USB interface, v4l2loopback devices under /sys/devices/virtual. Device nodes live beside the
tree (ROOT/sys → ROOT/dev/videoN, as /sys → /dev); they do not exist unless a test makes one,
and none is a real V4L2 device, so the QUERYCAP probes answer "unknown" and the code must keep
such devices.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEST_SUPPORT

from daemon.capture import resolve_auto_camera
from daemon.config import DEFAULT_LABEL, OutputConfig, VirtualCamSinkConfig
from daemon.doctor import run_checks
from daemon.errors import DeviceError, SinkError
from daemon.sinks import VirtualCamSink
from daemon.v4l2 import find_device_by_label, list_video_devices

REPO = Path(__file__).resolve().parents[1]
USB_INTERFACE = "devices/pci0000:00/0000:00:14.0/usb1/{port}/{port}:1.0"


class FakeSysfs:
    """Builds a /sys tree: video4linux class links, device directories, the loopback module."""

    def __init__(self, root: Path):
        self.root = root
        self.class_dir = root / "class" / "video4linux"
        self.class_dir.mkdir(parents=True)

    def _add(self, number: int, name: str | None, device_dir: str) -> Path:
        node_dir = self.root / device_dir / "video4linux" / f"video{number}"
        node_dir.mkdir(parents=True)
        if name is not None:
            (node_dir / "name").write_text(name + "\n")
        (node_dir / "dev").write_text(f"81:{number}\n")
        link = self.class_dir / f"video{number}"
        link.symlink_to(os.path.relpath(node_dir, self.class_dir))
        return node_dir

    def add_camera(self, number: int, name: str, port: str = "1-1") -> Path:
        """A USB webcam node (a UVC camera has two: capture and metadata, same name)."""
        interface = USB_INTERFACE.format(port=port)
        node_dir = self._add(number, name, interface)
        (node_dir / "device").symlink_to(os.path.relpath(self.root / interface, node_dir))
        return node_dir

    def add_loopback(self, number: int, name: str | None) -> Path:
        return self._add(number, name, "devices/virtual")

    def node(self, number: int) -> str:
        """Where the code under test expects /dev/videoN for this tree."""
        return str(self.root.parent / "dev" / f"video{number}")

    def make_node(self, number: int) -> str:
        """A stand-in device node: a plain file (opens, but answers no V4L2 ioctl)."""
        path = Path(self.node(number))
        path.parent.mkdir(exist_ok=True)
        path.touch()
        return str(path)

    def load_module(self, version: str = "0.12.7", exclusive_caps: str = "Y,N,N,N,N,N,N,N") -> None:
        module = self.root / "module" / "v4l2loopback"
        (module / "parameters").mkdir(parents=True)
        (module / "version").write_text(version + "\n")
        (module / "parameters" / "exclusive_caps").write_text(exclusive_caps + "\n")


@pytest.fixture
def sysfs(tmp_path: Path) -> FakeSysfs:
    return FakeSysfs(tmp_path / "sys")


def make_sink(sysfs: FakeSysfs, **fields: str) -> VirtualCamSink:
    return VirtualCamSink(
        VirtualCamSinkConfig(type="virtualcam", **fields), OutputConfig(), sysfs.root
    )


# ---------------------------------------------------------------- the fake tree itself


def test_fake_tree_mirrors_the_kernel_layout(sysfs: FakeSysfs) -> None:
    sysfs.add_camera(0, "Integrated Camera")
    sysfs.add_loopback(10, DEFAULT_LABEL)

    camera = sysfs.class_dir / "video0"
    assert camera.is_symlink()
    assert os.readlink(camera).startswith("../../devices/pci0000:00/")
    assert (camera / "device").resolve().name == "1-1:1.0"
    assert os.readlink(sysfs.class_dir / "video10") == "../../devices/virtual/video4linux/video10"


# ---------------------------------------------------------------- list_video_devices


def test_list_video_devices_in_numeric_order(sysfs: FakeSysfs) -> None:
    sysfs.add_loopback(10, DEFAULT_LABEL)
    sysfs.add_camera(2, "USB Webcam", port="1-2")
    sysfs.add_camera(3, "USB Webcam", port="1-2")
    sysfs.add_camera(0, "Integrated Camera")
    (sysfs.class_dir / "v4l-subdev0").mkdir()  # not a video node: ignored

    devices = list_video_devices(sysfs.root)

    assert [d.node for d in devices] == [sysfs.node(n) for n in (0, 2, 3, 10)]
    assert [d.name for d in devices] == [
        "Integrated Camera",
        "USB Webcam",
        "USB Webcam",
        DEFAULT_LABEL,
    ]
    assert [d.is_loopback for d in devices] == [False, False, False, True]


def test_list_video_devices_without_video4linux(tmp_path: Path) -> None:
    assert list_video_devices(tmp_path / "sys") == []


def test_a_device_without_a_name_file_has_an_empty_name(sysfs: FakeSysfs) -> None:
    sysfs.add_loopback(4, None)

    (device,) = list_video_devices(sysfs.root)

    assert (device.node, device.name, device.is_loopback) == (sysfs.node(4), "", True)


# ---------------------------------------------------------------- our device, by label


def test_auto_device_is_found_by_label_not_by_order(sysfs: FakeSysfs) -> None:
    sysfs.add_camera(0, "Integrated Camera")
    sysfs.add_loopback(2, "OBS Virtual Camera")
    sysfs.add_loopback(10, DEFAULT_LABEL)
    sysfs.load_module()

    found = find_device_by_label(DEFAULT_LABEL, sysfs.root)

    assert found is not None
    assert found.node == sysfs.node(10)
    assert make_sink(sysfs).resolve_device() == sysfs.node(10)


def test_label_must_belong_to_a_loopback_device(sysfs: FakeSysfs) -> None:
    sysfs.add_camera(0, DEFAULT_LABEL)  # a real camera that happens to share the name
    sysfs.add_loopback(11, DEFAULT_LABEL)
    sysfs.load_module()

    assert make_sink(sysfs).resolve_device() == sysfs.node(11)


def test_custom_label(sysfs: FakeSysfs) -> None:
    sysfs.add_loopback(10, DEFAULT_LABEL)
    sysfs.add_loopback(12, "Meeting Avatar")
    sysfs.load_module()

    assert make_sink(sysfs, label="Meeting Avatar").resolve_device() == sysfs.node(12)
    assert find_device_by_label("Nobody", sysfs.root) is None


def test_module_not_loaded_error_says_how_to_load_it(sysfs: FakeSysfs) -> None:
    sysfs.add_camera(0, "Integrated Camera")

    with pytest.raises(SinkError) as excinfo:
        make_sink(sysfs).resolve_device()

    message = str(excinfo.value)
    assert "not loaded" in message
    assert "modprobe v4l2loopback" in message
    assert 'card_label="Talking Head Cam"' in message


def test_no_matching_label_error_lists_the_labels_found(sysfs: FakeSysfs) -> None:
    sysfs.add_camera(0, "Integrated Camera")
    sysfs.add_loopback(2, "OBS Virtual Camera")
    sysfs.add_loopback(3, "Dummy video device (0x0000)")
    sysfs.load_module()

    with pytest.raises(SinkError) as excinfo:
        make_sink(sysfs).resolve_device()

    message = str(excinfo.value)
    assert "'Talking Head Cam'" in message
    assert f"{sysfs.node(2)} 'OBS Virtual Camera'" in message
    assert f"{sysfs.node(3)} 'Dummy video device (0x0000)'" in message
    assert "Integrated Camera" not in message  # only loopback devices are candidates
    assert 'card_label="Talking Head Cam"' in message


def test_no_loopback_device_at_all_says_none(sysfs: FakeSysfs) -> None:
    sysfs.load_module()

    with pytest.raises(SinkError, match=r"found: none"):
        make_sink(sysfs).resolve_device()


# ---------------------------------------------------------------- capture: source auto


def test_auto_camera_skips_our_own_device_even_at_video0(sysfs: FakeSysfs) -> None:
    sysfs.add_loopback(0, DEFAULT_LABEL)
    sysfs.add_camera(2, "USB Webcam", port="1-2")
    sysfs.add_camera(4, "Integrated Camera", port="1-3")
    sysfs.load_module()

    assert resolve_auto_camera([DEFAULT_LABEL], sysfs.root) == sysfs.node(2)


def test_auto_camera_skips_every_own_label(sysfs: FakeSysfs) -> None:
    sysfs.add_loopback(0, DEFAULT_LABEL)
    sysfs.add_loopback(1, "Meeting Avatar")
    sysfs.add_camera(5, "USB Webcam")

    assert resolve_auto_camera([DEFAULT_LABEL, "Meeting Avatar"], sysfs.root) == sysfs.node(5)


def test_auto_camera_prefers_a_real_camera_to_other_virtual_ones(sysfs: FakeSysfs) -> None:
    sysfs.add_loopback(1, "OBS Virtual Camera")
    sysfs.add_camera(2, "USB Webcam")
    assert resolve_auto_camera([DEFAULT_LABEL], sysfs.root) == sysfs.node(2)


def test_auto_camera_falls_back_to_another_virtual_camera(sysfs: FakeSysfs) -> None:
    sysfs.add_loopback(0, DEFAULT_LABEL)
    sysfs.add_loopback(1, "OBS Virtual Camera")
    assert resolve_auto_camera([DEFAULT_LABEL], sysfs.root) == sysfs.node(1)


def test_auto_camera_with_only_our_device_raises(sysfs: FakeSysfs) -> None:
    sysfs.add_loopback(10, DEFAULT_LABEL)
    sysfs.load_module()

    with pytest.raises(DeviceError, match=r"no camera found"):
        resolve_auto_camera([DEFAULT_LABEL], sysfs.root)


# ---------------------------------------------------------------- doctor

_LINE_RE = re.compile(r"^\[\s*(OK|WARN|FAIL|INFO)\] (.+?): (.*)$")


def parse_doctor(output: str) -> dict[str, tuple[str, str, str]]:
    """check name → (STATUS, detail, fix) from `doctor`'s printed lines."""
    checks: dict[str, tuple[str, str, str]] = {}
    last = None
    for line in output.splitlines():
        match = _LINE_RE.match(line)
        if match:
            status, name, detail = match.groups()
            checks[name] = (status, detail, "")
            last = name
        elif line.startswith("       fix: ") and last is not None:
            status, detail, _ = checks[last]
            checks[last] = (status, detail, line.removeprefix("       fix: "))
    return checks


@pytest.fixture
def null_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text('sinks: [{type: "null"}]\n')
    return path


def doctor(config: Path, sysfs: FakeSysfs) -> tuple[int, dict[str, tuple[str, str, str]], str]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon",
            "--config",
            str(config),
            "doctor",
        ],
        env={**os.environ, **TEST_SUPPORT, "THC_TEST_SYSFS": str(sysfs.root)},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    output = result.stdout + result.stderr
    return result.returncode, parse_doctor(result.stdout), output


OUR_DEVICE = f"virtual camera {DEFAULT_LABEL!r}"


def test_doctor_module_not_loaded(sysfs: FakeSysfs, null_config: Path) -> None:
    sysfs.add_camera(0, "Integrated Camera")

    rc, checks, output = doctor(null_config, sysfs)

    assert rc == 1, output
    status, detail, fix = checks["v4l2loopback"]
    assert status == "FAIL"
    assert "not loaded" in detail
    assert "modprobe v4l2loopback" in fix
    assert 'card_label="Talking Head Cam"' in fix
    assert checks["config"][0] == "OK"
    assert checks["camera"][:2] == ("OK", f"{sysfs.node(0)} 'Integrated Camera'")
    assert OUR_DEVICE not in checks  # nothing to look for without the module
    assert output.rstrip().endswith("problem(s): v4l2loopback")


def test_doctor_module_loaded_but_label_missing(sysfs: FakeSysfs, null_config: Path) -> None:
    sysfs.add_camera(0, "Integrated Camera")
    sysfs.add_loopback(2, "OBS Virtual Camera")
    sysfs.load_module(version="0.13.2", exclusive_caps="1")

    rc, checks, output = doctor(null_config, sysfs)

    assert rc == 1, output
    assert checks["v4l2loopback"][:2] == ("OK", "module loaded (0.13.2)")
    status, detail, fix = checks[OUR_DEVICE]
    assert status == "FAIL"
    assert f"{sysfs.node(2)} 'OBS Virtual Camera'" in detail
    assert "Integrated Camera" not in detail
    assert 'card_label="Talking Head Cam"' in fix
    assert "modprobe -r v4l2loopback" in fix
    assert "exclusive_caps" not in checks
    assert "v4l2loopback version" not in checks  # 0.13 does not get stuck


def test_doctor_warns_when_exclusive_caps_is_off(sysfs: FakeSysfs, null_config: Path) -> None:
    sysfs.add_loopback(10, DEFAULT_LABEL)
    sysfs.load_module(exclusive_caps="N")

    _, checks, output = doctor(null_config, sysfs)

    status, detail, fix = checks["exclusive_caps"]
    assert status == "WARN", output
    assert "exclusive_caps=N" in detail
    assert "Chrome" in detail
    assert "exclusive_caps=1" in fix


def test_doctor_with_our_device_labelled(sysfs: FakeSysfs, null_config: Path) -> None:
    sysfs.add_camera(0, "Integrated Camera")
    sysfs.add_loopback(2, "OBS Virtual Camera")
    sysfs.add_loopback(10, DEFAULT_LABEL)
    sysfs.load_module(version="0.12.7", exclusive_caps="Y,N,N,N,N,N,N,N")

    rc, checks, output = doctor(null_config, sysfs)

    assert checks["v4l2loopback"][:2] == ("OK", "module loaded (0.12.7)"), output
    assert checks["v4l2loopback version"][0] == "INFO"  # 0.12 gets stuck; the daemon copes
    assert "exclusive_caps" not in checks
    # sysfs says video10 is ours, but there is no such node: an honest FAIL
    status, detail, fix = checks[OUR_DEVICE]
    assert (status, detail) == ("FAIL", f"{sysfs.node(10)} does not exist")
    assert "modprobe v4l2loopback" in fix
    assert rc == 1
    assert output.rstrip().endswith(f"problem(s): {OUR_DEVICE}")


def test_doctor_checks_every_configured_virtual_camera(tmp_path: Path, sysfs: FakeSysfs) -> None:
    """In-process: each virtualcam sink of the config gets its own check."""
    config = tmp_path / "two-cams.yaml"
    config.write_text(
        "sinks:\n  - {type: virtualcam}\n  - {type: virtualcam, label: Meeting Avatar}\n"
    )
    sysfs.add_loopback(12, "Meeting Avatar")
    sysfs.load_module(version="0.13.2", exclusive_caps="Y")

    checks = {c.name: c for c in run_checks(str(config), sysfs.root)}

    assert checks["config"].status == "ok"
    assert checks["camera"].status == "warn"  # only loopback devices in this tree
    assert checks[OUR_DEVICE].status == "fail"
    assert f"{sysfs.node(12)} 'Meeting Avatar'" in checks[OUR_DEVICE].detail
    other = checks["virtual camera 'Meeting Avatar'"]
    assert (other.status, other.detail) == ("fail", f"{sysfs.node(12)} does not exist")
    assert other.format().startswith(f"[FAIL] virtual camera 'Meeting Avatar': {sysfs.node(12)}")


def test_doctor_ok_when_our_node_exists(sysfs: FakeSysfs, null_config: Path) -> None:
    sysfs.add_camera(0, "Integrated Camera")
    sysfs.add_loopback(10, DEFAULT_LABEL)
    sysfs.load_module(version="0.13.2", exclusive_caps="Y")
    node = sysfs.make_node(10)

    rc, checks, output = doctor(null_config, sysfs)

    # a plain file answers no QUERYCAP: capabilities unknown, so nothing to complain about
    assert checks[OUR_DEVICE][:2] == ("OK", node), output
    assert [name for name, (status, _, _) in checks.items() if status == "FAIL"] == []
    assert rc == 0
    assert output.rstrip().endswith("all good")


def test_doctor_checks_the_avatar(tmp_path: Path, sysfs: FakeSysfs, null_config: Path) -> None:
    rc, checks, output = doctor(null_config, sysfs)
    status, detail, _ = checks["avatar"]
    assert status == "OK", output
    assert detail.startswith("default (") and detail.endswith("grace_hopper.jpg), 512x600")

    missing = tmp_path / "nobody.png"
    config = tmp_path / "missing_avatar.yaml"
    config.write_text(f'avatar: {{image: "{missing}"}}\nsinks: [{{type: "null"}}]\n')
    rc, checks, output = doctor(config, sysfs)
    assert rc == 1 and "Traceback" not in output, output
    assert checks["avatar"] == (
        "FAIL",
        f"avatar.image: {missing} not found; fix the path or use 'default'",
        "",
    )
    assert output.rstrip().endswith("problem(s): avatar, v4l2loopback")
