"""One exception hierarchy that the CLI maps to exit codes and one-line messages: the
engines' errors (engines/errors.py) and the service's own."""

from __future__ import annotations

from engines.errors import AvatarError, EngineUnavailable, TalkingHeadCamError

__all__ = [
    "AvatarError",
    "CaptureError",
    "ConfigError",
    "DaemonNotRunning",
    "DeviceError",
    "EngineUnavailable",
    "SinkError",
    "TalkingHeadCamError",
]


class ConfigError(TalkingHeadCamError):
    """The configuration cannot be used; carries every problem found, one per line."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid config\n" + "\n".join(f"  {p}" for p in problems))


class CaptureError(TalkingHeadCamError):
    """A capture source cannot be opened or stopped delivering frames."""


class DeviceError(TalkingHeadCamError):
    """A kernel device (camera, v4l2loopback) is missing or unusable."""


class SinkError(TalkingHeadCamError):
    """An output sink cannot be opened or written."""


class DaemonNotRunning(TalkingHeadCamError):
    """A command needs the running daemon and cannot find it."""
