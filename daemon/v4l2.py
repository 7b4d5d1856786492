"""Facts about V4L2 devices from sysfs and two ioctls, without a camera library.

pyvirtualcam's own device scan takes the first loopback device it can open (and aborts on a
permission error), so we find OUR device by its card label in sysfs and pass it explicitly.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

log = logging.getLogger(__name__)

SYSFS_ROOT = Path("/sys")  # device nodes are in the sibling folder: /dev (a test tree: ROOT/dev)

# <linux/videodev2.h>
VIDIOC_QUERYCAP = 0x80685600  # _IOR('V', 0, struct v4l2_capability), 104 bytes
VIDIOC_STREAMON = 0x40045612  # _IOW('V', 18, int)
VIDIOC_S_PARM = 0xC0CC5616  # _IOWR('V', 22, struct v4l2_streamparm), 204 bytes
V4L2_BUF_TYPE_VIDEO_OUTPUT = 2
V4L2_CAP_VIDEO_CAPTURE = 0x00000001
V4L2_CAP_VIDEO_OUTPUT = 0x00000002
V4L2_CAP_DEVICE_CAPS = 0x80000000
_CAPABILITY = struct.Struct("16s32s32sIII3I")
_STREAMPARM_SIZE = 204


@dataclass(frozen=True, slots=True)
class VideoDevice:
    """One /dev/videoN as sysfs describes it."""

    node: str  # /dev/videoN
    name: str  # the card label (v4l2loopback's card_label)
    is_loopback: bool  # a virtual device (v4l2loopback), not a real camera


def list_video_devices(sysfs_root: Path = SYSFS_ROOT) -> list[VideoDevice]:
    """Every video4linux device, in numeric order; nodes are in /dev beside /sys."""
    dev_root = sysfs_root.parent / "dev"
    class_dir = sysfs_root / "class" / "video4linux"
    if not class_dir.is_dir():
        return []
    devices = []
    for entry in class_dir.iterdir():
        if not entry.name.startswith("video") or not entry.name[5:].isdigit():
            continue
        try:
            name = (entry / "name").read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            name = ""
        is_loopback = "/devices/virtual/" in str(entry.resolve())
        devices.append(VideoDevice(str(dev_root / entry.name), name, is_loopback))
    return sorted(devices, key=lambda d: int(Path(d.node).name[5:]))


def find_device_by_label(label: str, sysfs_root: Path = SYSFS_ROOT) -> VideoDevice | None:
    """Our v4l2loopback device: the first loopback device whose card label is `label`."""
    for device in list_video_devices(sysfs_root):
        if device.is_loopback and device.name == label:
            return device
    return None


def loopback_module_loaded(sysfs_root: Path = SYSFS_ROOT) -> bool:
    return (sysfs_root / "module" / "v4l2loopback").is_dir()


def loopback_version(sysfs_root: Path = SYSFS_ROOT) -> str | None:
    return _read_text(sysfs_root / "module" / "v4l2loopback" / "version")


def loopback_parameter(name: str, sysfs_root: Path = SYSFS_ROOT) -> str | None:
    return _read_text(sysfs_root / "module" / "v4l2loopback" / "parameters" / name)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def device_caps(node: str) -> int | None:
    """The device's V4L2 capability bits, or None when it cannot be opened."""
    try:
        fd = os.open(node, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        buf = bytearray(_CAPABILITY.size)
        fcntl.ioctl(fd, VIDIOC_QUERYCAP, buf)
    except OSError:
        return None
    finally:
        os.close(fd)
    fields = _CAPABILITY.unpack(bytes(buf))
    capabilities, caps = fields[4], fields[5]
    return caps if capabilities & V4L2_CAP_DEVICE_CAPS else capabilities


def can_capture(node: str) -> bool | None:
    """True/False when the device answered QUERYCAP, None when it could not be asked."""
    caps = device_caps(node)
    return None if caps is None else bool(caps & V4L2_CAP_VIDEO_CAPTURE)


def restore_output_caps(node: str) -> bool:
    """Unstick a v4l2loopback 0.12.x device whose last writer closed.

    With exclusive_caps=1, 0.12.7 drops to neither capture nor output after the writer closes,
    until the module is reloaded; a VIDIOC_STREAMON for the output buffer type on an O_RDWR
    handle (it answers EINVAL) restores the output capability. Returns whether it was issued.
    """
    try:
        fd = os.open(node, os.O_RDWR | os.O_NONBLOCK)
    except OSError as exc:
        log.debug("restore_output_caps(%s): cannot open: %s", node, exc)
        return False
    try:
        fcntl.ioctl(fd, VIDIOC_STREAMON, struct.pack("i", V4L2_BUF_TYPE_VIDEO_OUTPUT))
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            log.debug("restore_output_caps(%s): STREAMON: %s", node, exc)
    finally:
        os.close(fd)
    return True


def set_frame_rate(node: str, fps: float) -> bool:
    """Announce `fps` to the readers of a v4l2loopback device.

    pyvirtualcam sets only the format, so readers (Chrome, ffmpeg) see v4l2loopback's default
    30 fps whatever the writer sends; VIDIOC_S_PARM sets the frame interval they read back.
    Returns whether the device took it.
    """
    rate = Fraction(fps).limit_denominator(1001)
    buf = bytearray(_STREAMPARM_SIZE)
    # type, then v4l2_outputparm: capability, outputmode, timeperframe (seconds per frame)
    struct.pack_into(
        "5I", buf, 0, V4L2_BUF_TYPE_VIDEO_OUTPUT, 0, 0, rate.denominator, rate.numerator
    )
    try:
        fd = os.open(node, os.O_RDWR | os.O_NONBLOCK)
    except OSError as exc:
        log.debug("set_frame_rate(%s): cannot open: %s", node, exc)
        return False
    try:
        fcntl.ioctl(fd, VIDIOC_S_PARM, buf)
    except OSError as exc:
        log.debug("set_frame_rate(%s): S_PARM: %s", node, exc)
        return False
    finally:
        os.close(fd)
    return True
