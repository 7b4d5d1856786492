"""Test support for a real daemon process, switched on by TALKING_HEAD_CAM_TEST_SUPPORT=
thc_testing.plugin (daemon/test_support.py): the fault-injecting capture source and sink of
faults.py, the stall signal, remote-mode time codes, and a fake sysfs tree
(THC_TEST_SYSFS=DIR, for `doctor`)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from thc_testing.faults import FAULT_PREFIX, FaultInjectingReader, FaultSink, FaultSinkConfig
from thc_testing.timecode import read_timecode, stamp_timecode

ENV = {"TALKING_HEAD_CAM_TEST_SUPPORT": "thc_testing.plugin"}


class FaultSupport:
    sink_configs = (FaultSinkConfig,)

    @property
    def sysfs_root(self) -> Path | None:
        fake = os.environ.get("THC_TEST_SYSFS")
        return Path(fake) if fake else None

    def claims_source(self, source: str) -> bool:
        return source.startswith(FAULT_PREFIX)

    def resolve_source(self, source: str, absolute: Callable[[str], str]) -> str:
        return FAULT_PREFIX + absolute(source.removeprefix(FAULT_PREFIX))

    def open_source(self, source: str) -> FaultInjectingReader:
        return FaultInjectingReader(source.removeprefix(FAULT_PREFIX))

    def resolve_sink(self, sink: Any, absolute: Callable[[str], str]) -> Any:
        if isinstance(sink, FaultSinkConfig):
            return sink.model_copy(update={"control": absolute(sink.control)})
        return sink

    def open_sink(self, config: FaultSinkConfig, output: Any) -> FaultSink:
        return FaultSink(config, output)

    def remote_frame(self, camera: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Copies the benchmark page's time code from the camera frame into the avatar frame,
        so the page can measure the round trip (tests/bench_webrtc.py)."""
        out = out.copy()
        stamp_timecode(out, read_timecode(camera))
        return out


@functools.cache
def support() -> FaultSupport:
    return FaultSupport()
