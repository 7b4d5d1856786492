"""One exception hierarchy that the CLI maps to exit codes and one-line messages."""

from __future__ import annotations


class TalkingHeadCamError(Exception):
    """Base of every error we raise on purpose; its message is meant for the user."""

    exit_code = 1


class ConfigError(TalkingHeadCamError):
    """The configuration cannot be used; carries every problem found, one per line."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid config\n" + "\n".join(f"  {p}" for p in problems))


class AvatarError(TalkingHeadCamError):
    """An avatar image cannot be read or used."""


class CaptureError(TalkingHeadCamError):
    """A capture source cannot be opened or stopped delivering frames."""


class DeviceError(TalkingHeadCamError):
    """A kernel device (camera, v4l2loopback) is missing or unusable."""


class SinkError(TalkingHeadCamError):
    """An output sink cannot be opened or written."""


class DaemonNotRunning(TalkingHeadCamError):
    """A command needs the running daemon and cannot find it."""


class EngineUnavailable(TalkingHeadCamError):
    """The configured `engines` backend (or a built engine) cannot run on this machine.
    Exit code 2 like a bad config: restarting cannot install a GPU or a library."""

    exit_code = 2
