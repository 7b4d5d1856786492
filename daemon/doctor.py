"""`talking-head-cam doctor`: every check a user needs, each failure with its fix."""

from __future__ import annotations

import grp
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.config import Config, VirtualCamSinkConfig, find_config_path, load_config
from daemon.errors import ConfigError, EngineUnavailable
from daemon.sinks import LOAD_AT_BOOT_HINT, MODPROBE_HINT
from daemon.v4l2 import (
    SYSFS_ROOT,
    V4L2_CAP_VIDEO_CAPTURE,
    V4L2_CAP_VIDEO_OUTPUT,
    can_capture,
    device_caps,
    find_device_by_label,
    list_video_devices,
    loopback_module_loaded,
    loopback_parameter,
    loopback_version,
)
from engines.errors import AvatarError
from engines.generator.avatar import default_avatar_path, load_avatar
from engines.runtime.backends import AcceleratorReport, probe_accelerators
from engines.runtime.select import choose_engines
from engines.runtime.tensorrt_runtime import EngineRecord, engine_cache_dir, list_cached_engines

Status = Literal["ok", "warn", "fail", "info"]
DEPENDENCIES = ("mediapipe", "cv2", "numpy", "yaml", "pydantic", "pyvirtualcam", "matplotlib")


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def format(self) -> str:
        line = f"[{self.status.upper():>4}] {self.name}: {self.detail}"
        return line + (f"\n       fix: {self.fix}" if self.fix else "")


RELOAD_HINT = (
    f"reload the module with exclusive_caps=1: sudo modprobe -r v4l2loopback && {MODPROBE_HINT}"
)


def check_python() -> Check:
    found, missing = [], []
    for module in DEPENDENCIES:
        try:
            found.append(f"{module} {getattr(importlib.import_module(module), '__version__', '?')}")
        except Exception as exc:  # a broken install raises more than ImportError
            missing.append(f"{module} ({type(exc).__name__}: {exc})")
    if missing:
        return Check(
            "python",
            "fail",
            "cannot import " + "; ".join(missing),
            "make install (or: pip install talking-head-cam)",
        )
    return Check("python", "ok", ", ".join(found))


def check_config(config_arg: str | None) -> tuple[Check, Config | None]:
    try:
        path = find_config_path(config_arg)
        config = load_config(path)
    except ConfigError as exc:
        return Check(
            "config",
            "fail",
            str(exc),
            "fix the fields listed above; 'talking-head-cam check-config FILE' re-checks",
        ), None
    return Check("config", "ok", f"{path} is valid"), config


def check_avatar(spec: str) -> Check:
    """The configured avatar decodes (for 'default', the image embedded with matplotlib, which a
    broken install can lack), so a bad avatar shows here rather than only in the daemon's log."""
    try:
        image = load_avatar(spec)
    except AvatarError as exc:
        return Check("avatar", "fail", str(exc))  # its message names the fix
    path = default_avatar_path() if spec == "default" else Path(spec)
    name = f"default ({path})" if spec == "default" else str(path)
    return Check("avatar", "ok", f"{name}, {image.shape[1]}x{image.shape[0]}")


def check_cameras(sysfs_root: Path) -> Check:
    cameras = [
        d
        for d in list_video_devices(sysfs_root)
        if not d.is_loopback and can_capture(d.node) is not False  # not a metadata node
    ]
    if not cameras:
        return Check(
            "camera",
            "warn",
            "no camera device found (/dev/video*)",
            "plug in a webcam, or set capture.source to a video file; until then the avatar idles",
        )
    return Check("camera", "ok", ", ".join(f"{d.node} {d.name!r}" for d in cameras))


def check_loopback(sysfs_root: Path, sinks: list[VirtualCamSinkConfig]) -> list[Check]:
    if not loopback_module_loaded(sysfs_root):
        return [
            Check(
                "v4l2loopback",
                "fail",
                "the v4l2loopback kernel module is not loaded, so "
                "there is no virtual camera for Zoom/Meet/Chrome to pick",
                f"sudo apt install v4l2loopback-dkms; {MODPROBE_HINT}; to load it at every "
                f"boot: {LOAD_AT_BOOT_HINT}",
            )
        ]
    version = loopback_version(sysfs_root) or "unknown version"
    checks = [Check("v4l2loopback", "ok", f"module loaded ({version})")]
    if version.startswith("0.12."):
        checks.append(
            Check(
                "v4l2loopback version",
                "info",
                f"{version} gets stuck after a "
                "writer closes; the daemon restores the device by itself",
            )
        )
    exclusive = loopback_parameter("exclusive_caps", sysfs_root)
    if exclusive is not None and "Y" not in exclusive and "1" not in exclusive:
        checks.append(
            Check(
                "exclusive_caps",
                "warn",
                f"exclusive_caps={exclusive}: Chrome and Meet do not list the virtual camera",
                RELOAD_HINT,
            )
        )
    for sink in sinks or [VirtualCamSinkConfig(type="virtualcam")]:
        checks.append(_check_our_device(sink, sysfs_root))
    return checks


def _check_our_device(sink: VirtualCamSinkConfig, sysfs_root: Path) -> Check:
    name = f"virtual camera {sink.label!r}"
    if sink.device == "auto":
        device = find_device_by_label(sink.label, sysfs_root)
        if device is None:
            labels = [
                f"{d.node} {d.name!r}" for d in list_video_devices(sysfs_root) if d.is_loopback
            ]
            return Check(
                name,
                "fail",
                f"no loopback device has this label (found: {', '.join(labels) or 'none'})",
                f'reload v4l2loopback with card_label="{sink.label}": sudo modprobe -r '
                f"v4l2loopback && {MODPROBE_HINT}",
            )
        node = device.node
    else:
        node = sink.device
    if not os.path.exists(node):
        return Check(name, "fail", f"{node} does not exist", MODPROBE_HINT)
    if not os.access(node, os.R_OK | os.W_OK):
        return Check(
            name,
            "fail",
            f"no permission to open {node}",
            "sudo usermod -aG video $USER, then log out and in again",
        )
    caps = device_caps(node)
    if caps is not None and caps & V4L2_CAP_VIDEO_OUTPUT and caps & V4L2_CAP_VIDEO_CAPTURE:
        return Check(
            name,
            "warn",
            f"{node} has exclusive_caps off: Chrome and Meet will not list it",
            RELOAD_HINT,
        )
    if caps is not None and not caps & V4L2_CAP_VIDEO_OUTPUT:
        return Check(
            name,
            "info",
            f"{node} is in use by a writer or is stuck (v4l2loopback "
            "0.12); the daemon restores it when it opens the device",
        )
    return Check(name, "ok", f"{node}")


def check_video_group() -> Check:
    try:
        video = grp.getgrnam("video")
    except KeyError:
        return Check("video group", "info", "this system has no 'video' group")
    if os.getuid() == 0 or video.gr_gid in os.getgroups():
        return Check("video group", "ok", "you can open video devices")
    return Check(
        "video group",
        "warn",
        "your user is not in the 'video' group",
        "sudo usermod -aG video $USER, then log out and in again",
    )


def check_accelerators(report: AcceleratorReport) -> list[Check]:
    """The GPU as the driver sees it, then each backend (torch CUDA, TensorRT)."""
    gpu = (
        Check("gpu", "ok", report.gpu_detail or ", ".join(report.gpus))
        if report.gpus
        else Check(
            "gpu",
            "info",
            f"no NVIDIA GPU found ({report.gpu_detail or 'nvidia-smi lists none'}); "
            "the CPU path runs in real time without one",
        )
    )
    checks = [gpu]
    for backend in report.backends:
        checks.append(
            Check(f"engine {backend.name}", "ok" if backend.available else "info", backend.detail)
        )
    return checks


def check_engine_choice(requested: str, report: AcceleratorReport) -> Check:
    """What `engines:` resolves to here, as the daemon would decide it at start."""
    try:
        choice = choose_engines(requested, lambda: report)
    except EngineUnavailable as exc:
        return Check(
            "engines",
            "fail",
            str(exc),
            "set engines: auto in the config, or install what is missing (see the lines above)",
        )
    return Check("engines", "ok", f"{choice.name} — {choice.reason}")


def check_engine_cache(cache_dir: Path) -> Check:
    """Built TensorRT engines: how many, which networks, for which GPU and TensorRT."""
    records = list_cached_engines(cache_dir)
    if not records:
        return Check(
            "engine cache",
            "info",
            f"no TensorRT engines in {cache_dir} (they are built on the first start "
            "with engines: tensorrt, or by make engines)",
        )
    return Check(
        "engine cache",
        "info",
        f"{len(records)} engine(s) in {cache_dir}: {describe_engines(records)}",
    )


def describe_engines(records: list[EngineRecord]) -> str:
    """'face_detector, iris (NVIDIA … sm_90, TensorRT 10.7.0, fp16); …' grouped by target."""
    groups: dict[str, list[str]] = {}
    for record in records:
        groups.setdefault(f"{record.target.describe()}, {record.precision}", []).append(
            record.network
        )
    return "; ".join(f"{', '.join(names)} ({target})" for target, names in groups.items())


def run_checks(config_arg: str | None, sysfs_root: Path = SYSFS_ROOT) -> list[Check]:
    config_check, config = check_config(config_arg)
    sinks = config.sinks if config is not None else []
    cams = [s for s in sinks if isinstance(s, VirtualCamSinkConfig)]
    report = probe_accelerators()
    return [
        check_python(),
        config_check,
        *([check_avatar(config.avatar.image)] if config is not None else []),
        check_cameras(sysfs_root),
        *check_loopback(sysfs_root, cams),
        check_video_group(),
        *check_accelerators(report),
        check_engine_choice(config.engines if config is not None else "auto", report),
        check_engine_cache(engine_cache_dir(config.engine_cache_dir if config else None)),
    ]
