"""The one switch for test support, which a user never meets.

The reliability tests, the soak and the end-to-end tests need faults inside a real daemon
process: a camera that stalls or vanishes (capture source `fault:VIDEO`), sinks that fail or
block (`type: fault`), SIGUSR2 to stall the frame loop (the watchdog test), remote-mode time
codes (the round-trip benchmark) and a fake sysfs tree. They live in the test suite
(tests/thc_testing), not in the product. Only when TALKING_HEAD_CAM_TEST_SUPPORT names a
module (`thc_testing.plugin`, with tests/ on PYTHONPATH) is it imported, and its `support()`
extends the daemon at these points; without it none of that exists: the config knows no
such types, no such signal is handled, and no test module is imported.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

SWITCH = "TALKING_HEAD_CAM_TEST_SUPPORT"


class TestSupport(Protocol):
    """What test support may add to the daemon (see the module docstring)."""

    sink_configs: tuple[type, ...]  # extra sink config models, tagged by their `type`
    sysfs_root: Path | None  # a fake /sys for the CLI's doctor

    def claims_source(self, source: str) -> bool: ...

    def resolve_source(self, source: str, absolute: Callable[[str], str]) -> str: ...

    def open_source(self, source: str) -> Any: ...  # a capture FrameReader

    def resolve_sink(self, sink: Any, absolute: Callable[[str], str]) -> Any: ...

    def open_sink(self, config: Any, output: Any) -> Any: ...  # a Sink

    def remote_frame(self, camera: Any, out: Any) -> Any: ...  # the published frame


def loaded() -> TestSupport | None:
    """The test support the switch names, or None (always, in normal use)."""
    name = os.environ.get(SWITCH, "").strip()
    if not name:
        return None
    return importlib.import_module(name).support()
