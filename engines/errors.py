"""The base of the one exception hierarchy (daemon/errors.py adds the service's own), and the
errors the engines raise: the CLI maps each to an exit code and a one-line message."""

from __future__ import annotations


class TalkingHeadCamError(Exception):
    """Base of every error we raise on purpose; its message is meant for the user."""

    exit_code = 1


class AvatarError(TalkingHeadCamError):
    """An avatar image cannot be read or used."""


class EngineUnavailable(TalkingHeadCamError):
    """The configured `engines` backend (or a built engine) cannot run on this machine.
    Exit code 2 like a bad config: restarting cannot install a GPU or a library."""

    exit_code = 2
