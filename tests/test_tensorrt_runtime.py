"""The TensorRT adapter's logic without TensorRT: the engine cache (key, hit/miss/rebuild,
sidecar, superseded plans), dtype mapping, input checks, ONNX inputs and profiles, and the
clear errors when tensorrt is missing or fails. Real tiny ONNX files come from torch.

The only fake is the `tensorrt` module itself (TensorRT cannot be installed here): a
minimal stand-in with just the calls `_build_plan` makes, to check the parser's errors
are collected into one message and the build settings reach the builder."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
import types
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch

from daemon.errors import EngineUnavailable
from engines.runtime import tensorrt_runtime as rt
from engines.runtime.tensorrt_runtime import (
    BuildTarget,
    EngineRecord,
    TensorSpec,
    cache_decision,
    engine_key,
    ensure_engine,
    expected_record,
    file_sha256,
    input_problems,
    list_cached_engines,
    onnx_inputs,
    parser_error_message,
    profile_shapes,
    read_sidecar,
    stale_records,
    timing_cache_path,
    torch_dtype,
)

torch.set_num_threads(1)

H100 = BuildTarget("NVIDIA H100 80GB HBM3", "9.0", "10.7.0")
SHA = "a" * 64


def export(path: Path, channels: int = 4, dynamic_batch: bool = False) -> Path:
    torch.manual_seed(channels)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, channels, 3), torch.nn.ReLU()).eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, 16, 16),),
        str(path),
        input_names=["image"],
        output_names=["features"],
        dynamic_axes={"image": {0: "batch"}} if dynamic_batch else None,
        opset_version=17,
        dynamo=False,
    )
    return path


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(tmp_path_factory.mktemp("onnx") / "face_landmark.onnx")


class Builds:
    """A build function that counts its calls and returns distinct plan bytes."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return f"plan {self.calls}".encode()


# ---------------------------------------------------------------- the key


def test_key_is_stable_and_changes_with_each_component() -> None:
    key = engine_key(H100, SHA, "fp16")
    assert key == engine_key(BuildTarget(*vars_of(H100)), SHA, "fp16")
    assert len(key) == 16 and int(key, 16) >= 0
    variants = [
        engine_key(BuildTarget("NVIDIA RTX A4000", "9.0", "10.7.0"), SHA, "fp16"),
        engine_key(BuildTarget(H100.gpu_name, "8.6", "10.7.0"), SHA, "fp16"),
        engine_key(BuildTarget(H100.gpu_name, "9.0", "10.8.0"), SHA, "fp16"),
        engine_key(H100, "b" * 64, "fp16"),
        engine_key(H100, SHA, "fp32"),
    ]
    assert len({key, *variants}) == 6


def vars_of(target: BuildTarget) -> tuple[str, str, str]:
    return target.gpu_name, target.compute_capability, target.tensorrt_version


def test_expected_record_hashes_the_onnx_file(onnx_file: Path) -> None:
    record = expected_record(onnx_file, H100, "fp16")
    assert record.network == "face_landmark"
    assert record.onnx_sha256 == file_sha256(onnx_file)
    assert record.onnx_sha256 == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert record.key == engine_key(H100, record.onnx_sha256, "fp16")
    assert record.plan_path(Path("/c")) == Path(f"/c/face_landmark-{record.key}.plan")


# ---------------------------------------------------------------- hit, miss, rebuild


def test_miss_builds_then_hit_reuses(tmp_path: Path, onnx_file: Path) -> None:
    expected = expected_record(onnx_file, H100, "fp16")
    build = Builds()
    assert cache_decision(expected, tmp_path) == "miss"
    path, decision = ensure_engine(expected, tmp_path / "cache", build)
    assert (decision, build.calls, path.read_bytes()) == ("miss", 1, b"plan 1")
    path2, decision = ensure_engine(expected, tmp_path / "cache", build)
    assert (path2, decision, build.calls) == (path, "hit", 1)


def test_two_threads_wanting_one_engine_build_it_once(tmp_path: Path, onnx_file: Path) -> None:
    """Remote peers starting at once on TensorRT: the second waits for the first's plan."""
    expected = expected_record(onnx_file, H100, "fp16")
    build = Builds()

    def slow_build() -> bytes:
        time.sleep(0.3)
        return build()

    decisions: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: decisions.append(ensure_engine(expected, tmp_path, slow_build)[1])
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert build.calls == 1 and sorted(decisions) == ["hit", "miss"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_sidecar_says_what_the_plan_was_built_from_and_for(tmp_path: Path, onnx_file: Path) -> None:
    expected = expected_record(onnx_file, H100, "fp16", inputs={"image": (1, 3, 16, 16)})
    ensure_engine(expected, tmp_path, Builds())
    data = json.loads(expected.sidecar_path(tmp_path).read_text())
    assert data["gpu_name"] == H100.gpu_name and data["compute_capability"] == "9.0"
    assert data["tensorrt_version"] == "10.7.0" and data["precision"] == "fp16"
    assert data["onnx_sha256"] == file_sha256(onnx_file) and data["key"] == expected.key
    assert data["inputs"] == {"image": [1, 3, 16, 16]}
    assert data["built_at"] and data["build_s"] >= 0
    assert read_sidecar(expected.sidecar_path(tmp_path)) == EngineRecord(**data)


def test_a_plan_without_a_valid_sidecar_is_rebuilt(tmp_path: Path, onnx_file: Path) -> None:
    expected = expected_record(onnx_file, H100, "fp16")
    build = Builds()
    ensure_engine(expected, tmp_path, build)
    expected.sidecar_path(tmp_path).unlink()  # a build interrupted between plan and sidecar
    assert cache_decision(expected, tmp_path) == "rebuild"
    assert ensure_engine(expected, tmp_path, build)[1] == "rebuild" and build.calls == 2
    expected.sidecar_path(tmp_path).write_text("{not json")
    assert cache_decision(expected, tmp_path) == "rebuild"
    other = expected_record(onnx_file, H100, "fp16", onnx_sha256="c" * 64)
    expected.sidecar_path(tmp_path).write_text(json.dumps(asdict(other)))
    assert cache_decision(expected, tmp_path) == "rebuild"


def test_a_new_export_rebuilds_and_removes_the_superseded_plan(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    onnx = export(tmp_path / "iris.onnx", channels=4)
    build = Builds()
    old_path, _ = ensure_engine(expected_record(onnx, H100, "fp16"), cache, build)
    other_gpu = BuildTarget("NVIDIA RTX A4000", "8.6", "10.7.0")
    kept, _ = ensure_engine(expected_record(onnx, other_gpu, "fp16"), cache, build)
    kept_key = kept.stem.split("-")[-1]

    export(onnx, channels=5)  # the network changed: a new sha256, so a new key
    new_path, decision = ensure_engine(expected_record(onnx, H100, "fp16"), cache, build)
    assert decision == "miss" and new_path != old_path and build.calls == 3
    assert not old_path.exists() and not old_path.with_suffix(".json").exists()
    assert kept.exists()  # another GPU's plan is not superseded by this one
    cached = sorted((r.gpu_name, r.key) for r in list_cached_engines(cache))
    assert cached == [(H100.gpu_name, new_path.stem.split("-")[-1]), (other_gpu.gpu_name, kept_key)]


def test_stale_records_are_same_network_same_target_other_key() -> None:
    def rec(network: str, key: str, target: BuildTarget = H100) -> EngineRecord:
        return EngineRecord(network, key, *vars_of(target), SHA, "fp16")

    current = rec("iris", "k1")
    other_gpu = BuildTarget("NVIDIA RTX A4000", "8.6", "10.7.0")
    records = [current, rec("iris", "k0"), rec("face_detector", "k0"), rec("iris", "k2", other_gpu)]
    assert stale_records(records, current) == [rec("iris", "k0")]


def test_listing_skips_orphans_and_junk(tmp_path: Path, onnx_file: Path) -> None:
    assert list_cached_engines(tmp_path / "missing") == []
    expected = expected_record(onnx_file, H100, "fp32")
    ensure_engine(expected, tmp_path, Builds())
    (tmp_path / "junk.json").write_text("[]")
    orphan = expected_record(onnx_file, H100, "fp16")
    rt.write_sidecar(orphan, tmp_path)  # a sidecar whose plan is gone
    assert [r.key for r in list_cached_engines(tmp_path)] == [expected.key]


def test_timing_cache_is_per_gpu_and_tensorrt(tmp_path: Path) -> None:
    a = timing_cache_path(tmp_path, H100)
    assert a == timing_cache_path(tmp_path, BuildTarget(*vars_of(H100)))
    assert a != timing_cache_path(tmp_path, BuildTarget(H100.gpu_name, "9.0", "10.8.0"))
    assert a.parent == tmp_path and a.suffix == ".cache"


# ---------------------------------------------------------------- ONNX inputs and profiles


def test_onnx_inputs_static_and_dynamic(tmp_path: Path, onnx_file: Path) -> None:
    assert onnx_inputs(onnx_file) == {"image": (1, 3, 16, 16)}
    dynamic = export(tmp_path / "dyn.onnx", dynamic_batch=True)
    assert onnx_inputs(dynamic) == {"image": (-1, 3, 16, 16)}


def test_profile_shapes_fix_only_dynamic_inputs() -> None:
    assert profile_shapes({"image": (1, 3, 16, 16)}, None) == {}
    dynamic = {"image": (-1, 3, 16, 16), "mask": (1, 16)}
    assert profile_shapes(dynamic, {"image": (2, 3, 16, 16)}) == {"image": (2, 3, 16, 16)}
    with pytest.raises(ValueError, match=r"'image' has dynamic dimensions \(-1, 3, 16, 16\)"):
        profile_shapes(dynamic, None)
    with pytest.raises(ValueError, match="does not fit"):
        profile_shapes(dynamic, {"image": (2, 3, 16, 15)})
    with pytest.raises(ValueError, match="does not fit"):
        profile_shapes(dynamic, {"image": (2, 3, 16)})


# ---------------------------------------------------------------- tensors


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("FLOAT", torch.float32),
        ("HALF", torch.float16),
        ("BF16", torch.bfloat16),
        ("INT8", torch.int8),
        ("UINT8", torch.uint8),
        ("INT32", torch.int32),
        ("INT64", torch.int64),
        ("BOOL", torch.bool),
        ("FP8", torch.float8_e4m3fn),
        ("DataType.HALF", torch.float16),
    ],
)
def test_tensorrt_dtypes_map_to_torch(name: str, dtype: torch.dtype) -> None:
    assert torch_dtype(name) is dtype


def test_a_tensorrt_dtype_without_a_torch_twin_is_an_error() -> None:
    with pytest.raises(EngineUnavailable, match="INT4 has no torch equivalent"):
        torch_dtype("INT4")


SPECS = [
    TensorSpec("image", True, (1, 3, 16, 16), "FLOAT"),
    TensorSpec("features", False, (1, 4, 14, 14), "FLOAT"),
]


def test_inputs_that_fit_have_no_problems() -> None:
    assert input_problems(SPECS, {"image": ((1, 3, 16, 16), "float32", "cuda")}) == []


def test_input_problems_name_each_mismatch() -> None:
    assert input_problems(SPECS, {}) == ["missing input 'image'"]
    problems = input_problems(
        SPECS,
        {"image": ((1, 3, 16, 15), "float16", "cpu"), "features": ((1,), "float32", "cuda")},
    )
    assert problems == [
        "unknown input 'features' (the engine takes ['image'])",
        "input 'image' has shape (1, 3, 16, 15), the engine wants (1, 3, 16, 16)",
        "input 'image' is float16, the engine wants float32",
        "input 'image' is on cpu, the engine reads CUDA memory",
    ]


# ---------------------------------------------------------------- the tensorrt module


def test_missing_tensorrt_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, onnx_file: Path
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt → ImportError
    with pytest.raises(EngineUnavailable, match=r"^engines: tensorrt needs NVIDIA TensorRT 10"):
        rt.import_tensorrt()
    with pytest.raises(EngineUnavailable, match="pip install tensorrt"):
        rt.build_engine(onnx_file, tmp_path)
    with pytest.raises(EngineUnavailable, match="set engines: cuda or auto"):
        rt.TrtNetwork(tmp_path / "x.plan", "cpu")
    assert list(tmp_path.iterdir()) == []


def test_an_old_tensorrt_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    old = types.ModuleType("tensorrt")
    old.__version__ = "8.6.1"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", old)
    with pytest.raises(EngineUnavailable, match=r"TensorRT 8\.6\.1 is too old"):
        rt.import_tensorrt()


def test_parser_errors_are_one_message() -> None:
    message = parser_error_message(Path("m.onnx"), ["a bad node\n", "another"])
    assert message == (
        "TensorRT cannot parse m.onnx (2 error(s)): a bad node; another; "
        "re-export it (make engines) or use engines: cuda"
    )


class FakeTrt:
    """Minimal stand-in for the tensorrt module: only what _build_plan touches."""

    __version__ = "10.7.0"

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class MemoryPoolType:
        WORKSPACE = "workspace"

    class BuilderFlag:
        FP16 = "fp16"

    def __init__(self, parse_errors: list[str]) -> None:
        self.parse_errors = parse_errors
        self.config = types.SimpleNamespace(flags=[], pool={}, timing_loaded=None)

    def Builder(self, logger: Any) -> Any:
        fake = self

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                fake.config.pool[pool] = size

            def set_flag(self, flag: str) -> None:
                fake.config.flags.append(flag)

            def create_timing_cache(self, data: bytes) -> bytes:
                fake.config.timing_loaded = data
                return data

            def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
                return True

            def get_timing_cache(self) -> Any:
                return types.SimpleNamespace(serialize=lambda: b"timings v2")

        return types.SimpleNamespace(
            create_network=lambda flags: "network",
            create_builder_config=Config,
            build_serialized_network=lambda network, config: b"serialized plan",
        )

    def OnnxParser(self, network: Any, logger: Any) -> Any:
        errors = self.parse_errors
        return types.SimpleNamespace(
            parse=lambda data, path: not errors,
            num_errors=len(errors),
            get_error=lambda i: errors[i],
        )


def test_build_collects_every_parser_error(tmp_path: Path, onnx_file: Path) -> None:
    trt = FakeTrt(["node 3: unsupported op Foo", "node 7: bad attribute"])
    with pytest.raises(EngineUnavailable) as exc:
        rt._build_plan(trt, onnx_file, "fp16", tmp_path / "t.cache", None, 512)
    assert "(2 error(s)): node 3: unsupported op Foo; node 7: bad attribute" in str(exc.value)


def test_build_sets_precision_workspace_and_keeps_the_timing_cache(
    tmp_path: Path, onnx_file: Path
) -> None:
    timing = tmp_path / "t.cache"
    timing.write_bytes(b"timings v1")
    trt = FakeTrt([])
    plan = rt._build_plan(trt, onnx_file, "fp16", timing, None, 512)
    assert plan == b"serialized plan"
    assert trt.config.flags == ["fp16"] and trt.config.pool == {"workspace": 512 << 20}
    assert trt.config.timing_loaded == b"timings v1" and timing.read_bytes() == b"timings v2"
    fp32 = FakeTrt([])
    rt._build_plan(fp32, onnx_file, "fp32", tmp_path / "new.cache", None, 512)
    assert fp32.config.flags == [] and fp32.config.timing_loaded == b""


def test_key_changes_with_the_batch_an_engine_is_built_for() -> None:
    """The ONNX files have a dynamic batch that the profile fixes (max_faces): a plan built
    for one face must not be reused for three."""
    one = engine_key(H100, SHA, "fp16", {"image": (1, 3, 192, 192)})
    assert one == engine_key(H100, SHA, "fp16", {"image": (1, 3, 192, 192)})
    assert one != engine_key(H100, SHA, "fp16", {"image": (3, 3, 192, 192)})
    assert one != engine_key(H100, SHA, "fp16")
