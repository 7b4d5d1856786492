"""One exception hierarchy that the CLI maps to exit codes and one-line messages: the
engines' errors (engines/errors.py) and the service's own."""

from __future__ import annotations

from engines.errors import AvatarError, EngineUnavailable, TalkingHeadCamError

__all__ = [
    "AvatarError",
    "CaptureError",
    "ConfigError",
    "ConfigFileError",
    "DaemonNotRunning",
    "DeviceError",
    "EngineUnavailable",
    "SinkError",
    "TalkingHeadCamError",
    "UsageError",
]


class ConfigError(TalkingHeadCamError):
    """The configuration cannot be used; carries every problem found, one per line."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(self._message())

    def _message(self) -> str:
        return f"{self.source}: invalid config\n" + "\n".join(f"  {p}" for p in self.problems)


class ConfigFileError(ConfigError):
    """The config file itself cannot be used (missing, a folder, unreadable): nothing in it
    to list, so one line that names the file and the fix."""

    def __init__(self, source: str, problem: str):
        super().__init__(source, [problem])

    def _message(self) -> str:
        return f"{self.source}: {self.problems[0]}"


class UsageError(TalkingHeadCamError):
    """A command-line argument cannot be used; the message names it and the fix."""

    exit_code = 2


class CaptureError(TalkingHeadCamError):
    """A capture source cannot be opened or stopped delivering frames."""


class DeviceError(TalkingHeadCamError):
    """A kernel device (camera, v4l2loopback) is missing or unusable."""


class SinkError(TalkingHeadCamError):
    """An output sink cannot be opened or written."""


class DaemonNotRunning(TalkingHeadCamError):
    """A command needs the running daemon and cannot find it."""
