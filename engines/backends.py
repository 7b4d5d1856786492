"""What accelerated backends this machine offers; optional libraries are imported lazily
and a missing one is reported as unavailable with its reason, never as a crash."""

from __future__ import annotations

import importlib
import shutil
import subprocess
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BackendReport:
    """One backend: available or not, with a reason a person can act on."""

    name: str
    available: bool
    detail: str


@dataclass(frozen=True, slots=True)
class AcceleratorReport:
    gpus: list[str] = field(default_factory=list)
    backends: list[BackendReport] = field(default_factory=list)


def _nvidia_gpus() -> list[str]:
    """GPU names from nvidia-smi (empty without an NVIDIA driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _probe_torch() -> BackendReport:
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return BackendReport(
            "cuda", False, "torch is not installed (pip install 'talking-head-cam[engines]')"
        )
    if not torch.cuda.is_available():
        return BackendReport("cuda", False, f"torch {torch.__version__} sees no CUDA device")
    return BackendReport(
        "cuda", True, f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}"
    )


def _probe_tensorrt() -> BackendReport:
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return BackendReport(
            "tensorrt", False, "TensorRT is not installed (NVIDIA's pip index: tensorrt>=10)"
        )
    return BackendReport("tensorrt", True, f"TensorRT {trt.__version__}")


def probe_accelerators() -> AcceleratorReport:
    cpu = BackendReport("cpu", True, "MediaPipe + OpenCV (always available)")
    return AcceleratorReport(_nvidia_gpus(), [cpu, _probe_torch(), _probe_tensorrt()])
