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
    """GPUs the driver lists, and each backend's availability. `gpu_detail` says why `gpus`
    is empty (nvidia-smi missing or failing) or describes them (driver, memory)."""

    gpus: list[str] = field(default_factory=list)
    backends: list[BackendReport] = field(default_factory=list)
    gpu_detail: str = ""

    def backend(self, name: str) -> BackendReport:
        """The named backend's report; an unprobed one counts as unavailable."""
        for report in self.backends:
            if report.name == name:
                return report
        return BackendReport(name, False, f"{name} was not probed")


def _nvidia_smi() -> tuple[list[str], str]:
    """(GPU names, detail) from nvidia-smi: empty names without a working NVIDIA driver,
    and the detail then says why."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "nvidia-smi not found"
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except subprocess.CalledProcessError as exc:
        message = " ".join((exc.stdout or exc.stderr or "").split())[:200]
        return [], f"nvidia-smi failed: {message or f'exit status {exc.returncode}'}"
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"nvidia-smi failed: {exc}"
    return parse_nvidia_smi(out)


def parse_nvidia_smi(out: str) -> tuple[list[str], str]:
    """`name, driver, memory` CSV lines → (names, 'NAME (driver D, M)' joined by '; ')."""
    names, described = [], []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if not parts[0]:
            continue
        names.append(parts[0])
        extra = f" (driver {parts[1]}, {parts[2]})" if len(parts) >= 3 else ""
        described.append(parts[0] + extra)
    return names, "; ".join(described) or "nvidia-smi lists no GPU"


def _probe_torch() -> BackendReport:
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return BackendReport(
            "cuda", False, "torch is not installed (pip install 'talking-head-cam[engines]')"
        )
    version = torch.__version__
    if torch.version.cuda is None:
        return BackendReport(
            "cuda", False, f"torch {version} is a CPU-only build, so it sees no CUDA device"
        )
    if not torch.cuda.is_available():
        return BackendReport(
            "cuda", False, f"torch {version} (CUDA {torch.version.cuda}) sees no CUDA device"
        )
    major, minor = torch.cuda.get_device_capability(0)
    return BackendReport(
        "cuda",
        True,
        f"torch {version} (CUDA {torch.version.cuda}), "
        f"{torch.cuda.get_device_name(0)} (sm_{major}{minor})",
    )


def _probe_tensorrt() -> BackendReport:
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return BackendReport(
            "tensorrt", False, "TensorRT is not installed (NVIDIA's pip index: tensorrt>=10)"
        )
    version = str(getattr(trt, "__version__", "?"))
    if not version.split(".")[0].isdigit() or int(version.split(".")[0]) < 10:
        return BackendReport("tensorrt", False, f"TensorRT {version} is too old: need 10 or newer")
    return BackendReport("tensorrt", True, f"TensorRT {version}")


def probe_accelerators(libraries_without_gpu: bool = True) -> AcceleratorReport:
    """Every backend's availability. With `libraries_without_gpu` False, a machine whose
    driver lists no NVIDIA GPU does not import torch or TensorRT at all (the daemon's start:
    importing torch costs seconds and hundreds of MiB for nothing there)."""
    cpu = BackendReport("cpu", True, "MediaPipe + OpenCV (always available)")
    gpus, detail = _nvidia_smi()
    if not gpus and not libraries_without_gpu:
        skipped = "not tried without an NVIDIA GPU"
        return AcceleratorReport(
            gpus,
            [
                cpu,
                BackendReport("cuda", False, f"torch {skipped}"),
                BackendReport("tensorrt", False, f"TensorRT {skipped}"),
            ],
            detail,
        )
    return AcceleratorReport(gpus, [cpu, _probe_torch(), _probe_tensorrt()], detail)


def quick_probe() -> AcceleratorReport:
    """probe_accelerators for the daemon's start: no library imports without a GPU."""
    return probe_accelerators(libraries_without_gpu=False)
