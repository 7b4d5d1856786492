"""Which backend runs the per-frame networks: the config's `engines` value resolved against
what this machine actually offers, with a reason a person can read in the log."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from engines.errors import EngineUnavailable
from engines.runtime.backends import AcceleratorReport, probe_accelerators

log = logging.getLogger(__name__)

EngineName = Literal["cpu", "cuda", "tensorrt"]
REQUESTS = ("auto", "cpu", "cuda", "tensorrt")


@dataclass(frozen=True, slots=True)
class EngineChoice:
    """The backend to use and why it was picked."""

    name: EngineName
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def choose_engines(
    requested: str, probe: Callable[[], AcceleratorReport] = probe_accelerators
) -> EngineChoice:
    """`engines` from the config → the backend to run. auto takes the best available; an
    explicit cuda/tensorrt that cannot run raises EngineUnavailable naming the fix."""
    if requested not in REQUESTS:
        raise ValueError(f"engines: {requested!r} is not one of {', '.join(REQUESTS)}")
    if requested == "cpu":
        return EngineChoice("cpu", "engines: cpu in the config")
    report = probe()
    if requested == "auto":
        return choose_auto(report)
    if requested == "cuda":
        return _require_cuda(report)
    return _require_tensorrt(report)


# The TensorRT path has not yet run on real hardware (it cannot be installed anywhere it is
# tested): auto never picks it; `engines: tensorrt` still asks for it explicitly.
AUTO_SKIPS_TENSORRT = (
    "tensorrt only when asked for (engines: tensorrt): not yet run on real hardware"
)


def choose_auto(report: AcceleratorReport) -> EngineChoice:
    """cuda when torch sees a CUDA device, else cpu; never tensorrt (AUTO_SKIPS_TENSORRT)."""
    cuda, trt = report.backend("cuda"), report.backend("tensorrt")
    if cuda.available:
        not_trt = AUTO_SKIPS_TENSORRT if trt.available else f"not tensorrt: {trt.detail}"
        return EngineChoice("cuda", f"auto: {cuda.detail}; {not_trt}")
    return EngineChoice("cpu", f"auto: {_why_no_cuda(report)}")


def _why_no_cuda(report: AcceleratorReport) -> str:
    """'no NVIDIA GPU: nvidia-smi not found; torch … sees no CUDA device', or, with a GPU
    that torch cannot use, the GPU's name and torch's side of it."""
    cuda = report.backend("cuda")
    if not report.gpus:
        return f"no NVIDIA GPU: {report.gpu_detail or 'none found'}; {cuda.detail}"
    return f"{', '.join(report.gpus)} found, but {cuda.detail}"


def _require_cuda(report: AcceleratorReport) -> EngineChoice:
    cuda = report.backend("cuda")
    if cuda.available:
        return EngineChoice("cuda", f"engines: cuda in the config; {cuda.detail}")
    raise EngineUnavailable(
        f"engines: cuda needs an NVIDIA GPU that torch can use, but {_why_no_cuda(report)}; "
        "set engines: auto (or cpu) in the config, or install a CUDA build of torch"
    )


def _require_tensorrt(report: AcceleratorReport) -> EngineChoice:
    cuda, trt = report.backend("cuda"), report.backend("tensorrt")
    if cuda.available and trt.available:
        return EngineChoice("tensorrt", f"engines: tensorrt in the config; {trt.detail}")
    missing = [] if cuda.available else [_why_no_cuda(report)]
    missing += [] if trt.available else [trt.detail]
    raise EngineUnavailable(
        f"engines: tensorrt needs TensorRT 10 and a CUDA device torch can use, but "
        f"{'; '.join(missing)}; set engines: auto (or cuda, or cpu) in the config"
    )
