"""Backend choice (`engines:` in the config): auto picks the best this machine offers and
says why; an explicit backend that cannot run is a one-line error naming the fix. Probe
results are built here as plain values; the machine's real probe is checked as well."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from daemon.config import Config, load_config, validate_config
from daemon.doctor import check_accelerators, check_engine_cache, check_engine_choice
from daemon.errors import ConfigError, EngineUnavailable
from engines.runtime.backends import AcceleratorReport, BackendReport, parse_nvidia_smi
from engines.runtime.select import AUTO_SKIPS_TENSORRT, EngineChoice, choose_engines
from engines.runtime.tensorrt_runtime import (
    BuildTarget,
    default_engine_cache_dir,
    engine_cache_dir,
    ensure_engine,
    expected_record,
)

NO_SMI = "nvidia-smi not found"
CPU_TORCH = "torch 2.13.0+cpu is a CPU-only build, so it sees no CUDA device"
NO_TRT = "TensorRT is not installed (NVIDIA's pip index: tensorrt>=10)"


def report(
    gpus: list[str] | None = None,
    cuda: str | None = None,
    trt: str | None = None,
    gpu_detail: str = NO_SMI,
) -> AcceleratorReport:
    """A probe result: `cuda`/`trt` are the detail of an available backend, None = absent."""
    return AcceleratorReport(
        gpus or [],
        [
            BackendReport("cpu", True, "MediaPipe + OpenCV (always available)"),
            BackendReport("cuda", cuda is not None, cuda or CPU_TORCH),
            BackendReport("tensorrt", trt is not None, trt or NO_TRT),
        ],
        gpu_detail,
    )


H100 = "NVIDIA H100 80GB HBM3"
TORCH_CUDA = f"torch 2.13.0+cu128 (CUDA 12.8), {H100} (sm_90)"


def choose(requested: str, probe: AcceleratorReport) -> EngineChoice:
    return choose_engines(requested, lambda: probe)


# ---------------------------------------------------------------- auto


def test_auto_prefers_cuda_then_cpu_and_never_tensorrt() -> None:
    with_trt = choose("auto", report([H100], TORCH_CUDA, "TensorRT 10.7.0"))
    assert with_trt.name == "cuda"  # TensorRT has not run on real hardware yet
    assert with_trt.reason == f"auto: {TORCH_CUDA}; {AUTO_SKIPS_TENSORRT}"
    assert "only when asked for" in with_trt.reason
    assert choose("auto", report([H100], TORCH_CUDA)).name == "cuda"
    assert choose("auto", report()).name == "cpu"


def test_auto_never_picks_tensorrt_without_a_cuda_device() -> None:
    choice = choose("auto", report([H100], None, "TensorRT 10.7.0", gpu_detail=H100))
    assert choice.name == "cpu"
    assert choice.reason == f"auto: {H100} found, but {CPU_TORCH}"


def test_auto_reasons_say_what_was_found_and_what_was_missing() -> None:
    assert choose("auto", report()).reason == f"auto: no NVIDIA GPU: {NO_SMI}; {CPU_TORCH}"
    cuda = choose("auto", report([H100], TORCH_CUDA))
    assert cuda.reason == f"auto: {TORCH_CUDA}; not tensorrt: {NO_TRT}"
    trt = choose("tensorrt", report([H100], TORCH_CUDA, "TensorRT 10.7.0"))
    assert str(trt) == "tensorrt (engines: tensorrt in the config; TensorRT 10.7.0)"


def test_cpu_is_always_granted_without_probing() -> None:
    def probe() -> AcceleratorReport:
        raise AssertionError("cpu needs no probe")

    assert choose_engines("cpu", probe) == EngineChoice("cpu", "engines: cpu in the config")


# ---------------------------------------------------------------- explicit requests


def test_explicit_backends_when_available() -> None:
    full = report([H100], TORCH_CUDA, "TensorRT 10.7.0")
    assert choose("cuda", full).name == "cuda"
    assert choose("tensorrt", full).name == "tensorrt"
    assert choose("cuda", report([H100], TORCH_CUDA)).name == "cuda"


def test_explicit_cuda_without_a_gpu_is_a_one_line_error_naming_the_field() -> None:
    with pytest.raises(EngineUnavailable) as exc:
        choose("cuda", report())
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("engines: cuda needs an NVIDIA GPU")
    assert NO_SMI in message and CPU_TORCH in message
    assert "set engines: auto" in message
    assert exc.value.exit_code == 2


def test_explicit_tensorrt_names_each_missing_piece() -> None:
    with pytest.raises(EngineUnavailable, match=r"^engines: tensorrt .*not installed"):
        choose("tensorrt", report([H100], TORCH_CUDA))
    with pytest.raises(EngineUnavailable) as exc:
        choose("tensorrt", report([H100], None, "TensorRT 10.7.0", gpu_detail=H100))
    assert CPU_TORCH in str(exc.value) and NO_TRT not in str(exc.value)
    with pytest.raises(EngineUnavailable) as exc:
        choose("tensorrt", report())
    assert NO_SMI in str(exc.value) and NO_TRT in str(exc.value)


def test_an_unknown_request_is_refused() -> None:
    with pytest.raises(ValueError, match="'gpu' is not one of auto, cpu, cuda, tensorrt"):
        choose("gpu", report())


# ---------------------------------------------------------------- this machine


def test_this_machine_without_cuda_gets_cpu_and_the_reason() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    choice = choose_engines("auto")
    assert choice.name == "cpu"
    assert choice.reason.startswith("auto: ")
    assert "sees no CUDA device" in choice.reason
    with pytest.raises(EngineUnavailable, match=r"^engines: cuda needs an NVIDIA GPU"):
        choose_engines("cuda")


def test_nvidia_smi_output_is_parsed_into_names_and_a_description() -> None:
    out = f"{H100}, 550.54.15, 81559 MiB\nNVIDIA RTX A4000, 550.54.15, 16376 MiB\n\n"
    names, detail = parse_nvidia_smi(out)
    assert names == [H100, "NVIDIA RTX A4000"]
    assert detail == (
        f"{H100} (driver 550.54.15, 81559 MiB); NVIDIA RTX A4000 (driver 550.54.15, 16376 MiB)"
    )
    assert parse_nvidia_smi("") == ([], "nvidia-smi lists no GPU")


def test_a_missing_backend_counts_as_unavailable() -> None:
    assert not AcceleratorReport().backend("tensorrt").available


# ---------------------------------------------------------------- the config fields


def test_engines_config_defaults_and_validation() -> None:
    assert Config().engines == "auto" and Config().engine_cache_dir is None
    assert validate_config({"engines": "tensorrt"}).engines == "tensorrt"
    with pytest.raises(ConfigError, match=r"engines: 'gpu' is not allowed; expected 'auto'"):
        validate_config({"engines": "gpu"})


def test_engine_cache_dir_is_relative_to_the_config_or_the_xdg_cache(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("engine_cache_dir: cache/engines\n")
    configured = load_config(path).engine_cache_dir
    assert configured == str(tmp_path / "cache" / "engines")
    assert engine_cache_dir(configured) == tmp_path / "cache" / "engines"
    env = {"XDG_CACHE_HOME": "/x/cache", "HOME": "/home/u"}
    assert engine_cache_dir(None, env) == Path("/x/cache/talking-head-cam/engines")
    assert default_engine_cache_dir({"HOME": "/home/u"}) == Path(
        "/home/u/.cache/talking-head-cam/engines"
    )


# ---------------------------------------------------------------- doctor's lines


def test_doctor_reports_the_gpu_and_the_choice() -> None:
    gpu, _cpu, cuda, trt = check_accelerators(report([H100], TORCH_CUDA, gpu_detail=f"{H100} x"))
    assert (gpu.name, gpu.status, gpu.detail) == ("gpu", "ok", f"{H100} x")
    assert (cuda.name, cuda.status, trt.status) == ("engine cuda", "ok", "info")
    none = check_accelerators(report())[0]
    assert none.status == "info" and f"no NVIDIA GPU found ({NO_SMI})" in none.detail
    ok = check_engine_choice("auto", report([H100], TORCH_CUDA))
    assert (ok.status, ok.detail) == ("ok", f"cuda — auto: {TORCH_CUDA}; not tensorrt: {NO_TRT}")
    with_trt = check_engine_choice("auto", report([H100], TORCH_CUDA, "TensorRT 10.7.0"))
    assert with_trt.detail == f"cuda — auto: {TORCH_CUDA}; {AUTO_SKIPS_TENSORRT}"
    failed = check_engine_choice("tensorrt", report())
    assert failed.status == "fail" and failed.detail.startswith("engines: tensorrt needs")
    assert "engines: auto" in failed.fix


def test_doctor_lists_cached_engines_by_gpu_and_tensorrt(tmp_path: Path) -> None:
    assert "no TensorRT engines in" in check_engine_cache(tmp_path / "none").detail
    a4000 = BuildTarget("NVIDIA RTX A4000", "8.6", "10.7.0")
    h100 = BuildTarget(H100, "9.0", "10.7.0")
    for network, target in (("face_detector", h100), ("iris", h100), ("iris", a4000)):
        onnx = tmp_path / f"{network}.onnx"
        onnx.write_bytes(network.encode())
        ensure_engine(expected_record(onnx, target, "fp16"), tmp_path / "cache", lambda: b"p")
    check = check_engine_cache(tmp_path / "cache")
    assert check.detail == (
        f"3 engine(s) in {tmp_path / 'cache'}: face_detector, iris ({H100} sm_90, "
        "TensorRT 10.7.0, fp16); iris (NVIDIA RTX A4000 sm_86, TensorRT 10.7.0, fp16)"
    )


def test_doctor_fails_an_explicit_backend_this_machine_lacks(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    config = tmp_path / "config.yaml"
    config.write_text('engines: cuda\nsinks: [{type: "null"}]\n')
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "--config", str(config), "doctor"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stdout.splitlines()
    engines = next(line for line in lines if line.startswith("[FAIL] engines: "))
    assert "engines: cuda needs an NVIDIA GPU" in engines
    assert result.returncode == 1 and "problem(s):" in result.stdout
    assert any(line.startswith("[INFO] engine cache: ") for line in lines)
