"""TensorRT 10: ONNX → cached engine plan → a thin runner on torch's CUDA tensors and streams.

Engines are specific to the GPU model, the TensorRT version, the network and the precision,
so a plan is cached under a key hashed from exactly those, with a JSON sidecar saying what it
was built for; any change builds a new plan (minutes), an unchanged key reuses it (instant).
torch owns the CUDA context and memory: buffers are torch tensors, the stream a torch stream.
Everything but the few calls into `tensorrt` is plain logic on plain values, testable without.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from engines.errors import EngineUnavailable

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

KEY_VERSION = 1  # bump when the plan format or build settings change meaning
WORKSPACE_MB = 1024
Decision = Literal["hit", "miss", "rebuild"]
Precision = Literal["fp16", "fp32"]

# TensorRT DataType member names → torch dtype attribute names (INT4/FP4 have no torch twin)
TRT_TO_TORCH = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "FP8": "float8_e4m3fn",
}


# ---------------------------------------------------------------- where and under which key


def default_engine_cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """$XDG_CACHE_HOME/talking-head-cam/engines (XDG default: ~/.cache)."""
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "talking-head-cam" / "engines"


def engine_cache_dir(configured: str | None, env: Mapping[str, str] = os.environ) -> Path:
    """The config's `engine_cache_dir`, or the XDG default when it is null."""
    return Path(configured) if configured else default_engine_cache_dir(env)


@dataclass(frozen=True, slots=True)
class BuildTarget:
    """What a plan is only valid for: the GPU model and the TensorRT version."""

    gpu_name: str
    compute_capability: str  # "8.6"
    tensorrt_version: str

    def describe(self) -> str:
        return f"{self.gpu_name} sm_{self.compute_capability.replace('.', '')}, " + (
            f"TensorRT {self.tensorrt_version}"
        )


def engine_key(
    target: BuildTarget,
    onnx_sha256: str,
    precision: Precision,
    inputs: Mapping[str, tuple[int, ...]] | None = None,
) -> str:
    """16 hex digits, stable for the same inputs and different when any one changes.
    `inputs`: the engine's input shapes; a dynamic batch fixed by the profile is not in the
    ONNX file's hash, and a plan built for another batch must not be a hit."""
    parts: list[object] = [
        KEY_VERSION,
        target.gpu_name,
        target.compute_capability,
        target.tensorrt_version,
        onnx_sha256,
        precision,
    ]
    if inputs:
        parts.append(sorted((name, list(shape)) for name, shape in inputs.items()))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class EngineRecord:
    """The JSON sidecar next to each plan: what it was built from and for."""

    network: str
    key: str
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    onnx_sha256: str
    precision: str
    onnx_path: str = ""
    built_at: str = ""
    build_s: float = 0.0
    inputs: dict[str, list[int]] = field(default_factory=dict)

    @property
    def target(self) -> BuildTarget:
        return BuildTarget(self.gpu_name, self.compute_capability, self.tensorrt_version)

    def plan_path(self, cache_dir: Path) -> Path:
        return cache_dir / f"{self.network}-{self.key}.plan"

    def sidecar_path(self, cache_dir: Path) -> Path:
        return cache_dir / f"{self.network}-{self.key}.json"


def expected_record(
    onnx_path: Path,
    target: BuildTarget,
    precision: Precision,
    onnx_sha256: str | None = None,
    inputs: Mapping[str, tuple[int, ...]] | None = None,
) -> EngineRecord:
    """The record a plan for this ONNX file, target and precision must carry."""
    sha = onnx_sha256 or file_sha256(onnx_path)
    return EngineRecord(
        network=onnx_path.stem,
        key=engine_key(target, sha, precision, inputs),
        gpu_name=target.gpu_name,
        compute_capability=target.compute_capability,
        tensorrt_version=target.tensorrt_version,
        onnx_sha256=sha,
        precision=precision,
        onnx_path=str(onnx_path),
        inputs={name: list(shape) for name, shape in (inputs or {}).items()},
    )


def read_sidecar(path: Path) -> EngineRecord | None:
    """The sidecar's record, or None when it is missing or unreadable (→ rebuild)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return EngineRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_sidecar(record: EngineRecord, cache_dir: Path) -> Path:
    path = record.sidecar_path(cache_dir)
    write_atomic(path, (json.dumps(asdict(record), indent=2) + "\n").encode())
    return path


def cache_decision(expected: EngineRecord, cache_dir: Path) -> Decision:
    """hit: plan and a matching sidecar exist; miss: no plan; rebuild: a plan without a
    matching sidecar (an interrupted build, or a sidecar from elsewhere)."""
    if not expected.plan_path(cache_dir).is_file():
        return "miss"
    found = read_sidecar(expected.sidecar_path(cache_dir))
    if found is None or found.key != expected.key or found.onnx_sha256 != expected.onnx_sha256:
        return "rebuild"
    return "hit"


def stale_records(records: Iterable[EngineRecord], current: EngineRecord) -> list[EngineRecord]:
    """Older plans of the same network for the same GPU and TensorRT: superseded by
    `current` (a new export or precision). Plans for another GPU or TensorRT are kept."""
    return [
        r
        for r in records
        if r.network == current.network and r.target == current.target and r.key != current.key
    ]


def list_cached_engines(cache_dir: Path) -> list[EngineRecord]:
    """Every readable sidecar in the cache whose plan is there too, sorted by network."""
    if not cache_dir.is_dir():
        return []
    records = [read_sidecar(p) for p in sorted(cache_dir.glob("*.json"))]
    return sorted(
        (r for r in records if r is not None and r.plan_path(cache_dir).is_file()),
        key=lambda r: (r.network, r.key),
    )


def ensure_engine(
    expected: EngineRecord, cache_dir: Path, build: Callable[[], bytes]
) -> tuple[Path, Decision]:
    """Return the cached plan for `expected`, calling `build` (→ plan bytes) only on a miss
    or rebuild; writes the plan, then its sidecar (so a crash mid-way means rebuild). One
    builder at a time: whoever waited finds the plan the other built."""
    plan_path = expected.plan_path(cache_dir)
    if cache_decision(expected, cache_dir) == "hit":
        log.debug("engine %s: cached %s", expected.network, plan_path.name)
        return plan_path, "hit"
    with cache_lock(cache_dir):
        return _build_locked(expected, cache_dir, build)


def _build_locked(
    expected: EngineRecord, cache_dir: Path, build: Callable[[], bytes]
) -> tuple[Path, Decision]:
    decision = cache_decision(expected, cache_dir)
    plan_path = expected.plan_path(cache_dir)
    if decision == "hit":
        log.debug("engine %s: built meanwhile %s", expected.network, plan_path.name)
        return plan_path, decision
    log.info("engine %s: building (%s) → %s", expected.network, decision, plan_path)
    start = time.perf_counter()
    plan = build()
    write_atomic(plan_path, plan)
    record = EngineRecord(
        **{
            **asdict(expected),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_s": round(time.perf_counter() - start, 1),
        }
    )
    write_sidecar(record, cache_dir)
    for old in stale_records(list_cached_engines(cache_dir), record):
        log.info("engine %s: removing superseded %s", old.network, old.plan_path(cache_dir).name)
        old.plan_path(cache_dir).unlink(missing_ok=True)
        old.sidecar_path(cache_dir).unlink(missing_ok=True)
    return plan_path, decision


def timing_cache_path(cache_dir: Path, target: BuildTarget) -> Path:
    """One timing cache per GPU model and TensorRT version (entries do not carry over)."""
    tag = hashlib.sha256(json.dumps(asdict(target)).encode()).hexdigest()[:12]
    return cache_dir / f"timing-{tag}.cache"


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one (the temporary name is
    per process and thread: remote peers build their engines on threads of their own)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def cache_lock(folder: Path) -> Iterator[None]:
    """Exclusive use of a cache folder across threads and processes (flock on a lock file:
    the daemon, its remote peers and `make engines` may all export or build at once)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- ONNX inputs and profiles


def onnx_inputs(onnx_path: Path) -> dict[str, tuple[int, ...]]:
    """Graph input name → shape, -1 for a dynamic dimension (initializers excluded)."""
    onnx = importlib.import_module("onnx")
    model = onnx.load(str(onnx_path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    return {
        inp.name: tuple(
            d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim
        )
        for inp in model.graph.input
        if inp.name not in weights
    }


def profile_shapes(
    inputs: Mapping[str, tuple[int, ...]], given: Mapping[str, tuple[int, ...]] | None
) -> dict[str, tuple[int, ...]]:
    """Fixed shapes for the inputs with dynamic dimensions (an optimisation profile with
    min = opt = max); empty when the network is static. Raises naming what is missing."""
    given = given or {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in inputs.items():
        if all(d >= 0 for d in shape):
            continue
        if name not in given:
            raise ValueError(
                f"ONNX input {name!r} has dynamic dimensions {shape}; pass its shape in "
                f"input_shapes={{{name!r}: (...)}}"
            )
        fixed = tuple(given[name])
        if len(fixed) != len(shape) or any(
            d >= 0 and d != f for d, f in zip(shape, fixed, strict=True)
        ):
            raise ValueError(f"input_shapes[{name!r}] = {fixed} does not fit the ONNX {shape}")
        shapes[name] = fixed
    return shapes


def parser_error_message(onnx_path: Path, errors: list[str]) -> str:
    """All ONNX parser errors in one message (TensorRT reports them one at a time)."""
    listed = "; ".join(e.strip() for e in errors) or "no details from the parser"
    return (
        f"TensorRT cannot parse {onnx_path} ({len(errors)} error(s)): {listed}; "
        "re-export it (make engines) or use engines: cuda"
    )


# ---------------------------------------------------------------- tensors: dtypes and checks


def torch_dtype(trt_dtype_name: str) -> torch.dtype:
    """TensorRT DataType name (FLOAT, HALF, …) → torch dtype; unsupported names raise."""
    torch = importlib.import_module("torch")
    name = TRT_TO_TORCH.get(trt_dtype_name.rsplit(".", 1)[-1])
    if name is None or not hasattr(torch, name):
        raise EngineUnavailable(f"TensorRT tensor type {trt_dtype_name} has no torch equivalent")
    return getattr(torch, name)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One engine I/O tensor as plain values."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: str  # TensorRT DataType name


def input_problems(
    specs: Iterable[TensorSpec], given: Mapping[str, tuple[tuple[int, ...], str, str]]
) -> list[str]:
    """What is wrong with the inputs `given` (name → (shape, torch dtype name, device
    type)) for an engine with `specs`: missing, unknown, wrong shape, type or device."""
    inputs = {s.name: s for s in specs if s.is_input}
    problems = [f"missing input {n!r}" for n in inputs if n not in given]
    problems += [
        f"unknown input {n!r} (the engine takes {sorted(inputs)})" for n in given if n not in inputs
    ]
    for name, (shape, dtype, device) in given.items():
        spec = inputs.get(name)
        if spec is None:
            continue
        if tuple(shape) != spec.shape:
            problems.append(
                f"input {name!r} has shape {tuple(shape)}, the engine wants {spec.shape}"
            )
        if dtype != TRT_TO_TORCH.get(spec.dtype, spec.dtype):
            problems.append(
                f"input {name!r} is {dtype}, the engine wants {TRT_TO_TORCH.get(spec.dtype)}"
            )
        if device != "cuda":
            problems.append(f"input {name!r} is on {device}, the engine reads CUDA memory")
    return problems


# ---------------------------------------------------------------- the tensorrt module


def import_tensorrt() -> Any:
    """The tensorrt module (10 or newer), or EngineUnavailable saying what to do."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise EngineUnavailable(
            f"engines: tensorrt needs NVIDIA TensorRT 10, which cannot be imported ({exc}); "
            "install it (pip install tensorrt, from NVIDIA's index) or set engines: cuda or auto"
        ) from None
    version = str(getattr(trt, "__version__", "0"))
    major = version.split(".")[0]
    if not major.isdigit() or int(major) < 10:
        raise EngineUnavailable(
            f"TensorRT {version} is too old: this needs TensorRT 10 or newer; upgrade it "
            "or set engines: cuda"
        )
    return trt


def current_target(trt: Any, device: str = "cuda") -> BuildTarget:
    """This process's GPU (as torch sees it) and TensorRT version."""
    torch = importlib.import_module("torch")
    if not torch.cuda.is_available():
        raise EngineUnavailable(
            "engines: tensorrt needs a CUDA device, and torch sees none; set engines: auto"
        )
    index = torch.device(device).index or 0
    major, minor = torch.cuda.get_device_capability(index)
    return BuildTarget(torch.cuda.get_device_name(index), f"{major}.{minor}", trt.__version__)


@functools.cache
def _trt_logger(trt: Any) -> Any:
    """One logger per process: TensorRT keeps the first one it is given and warns about
    every different one passed later."""
    return trt.Logger(trt.Logger.WARNING)


def _build_plan(
    trt: Any,
    onnx_path: Path,
    precision: Precision,
    timing_path: Path,
    input_shapes: Mapping[str, tuple[int, ...]] | None,
    workspace_mb: int,
) -> bytes:
    """Parse, configure (precision, workspace, timing cache, profile) and build one plan."""
    logger = _trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineUnavailable(parser_error_message(onnx_path, errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    shapes = profile_shapes(onnx_inputs(onnx_path), input_shapes)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, shape in shapes.items():
            profile.set_shape(name, shape, shape, shape)
        config.add_optimization_profile(profile)
    timing_bytes = timing_path.read_bytes() if timing_path.is_file() else b""
    timing = config.create_timing_cache(timing_bytes)
    config.set_timing_cache(timing, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineUnavailable(
            f"TensorRT could not build an engine from {onnx_path} (see the log above); "
            "use engines: cuda"
        )
    write_atomic(timing_path, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def build_engine(
    onnx_path: Path,
    cache_dir: Path,
    fp16: bool = True,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    workspace_mb: int = WORKSPACE_MB,
    device: str = "cuda",
) -> Path:
    """The cached plan for `onnx_path` on this GPU and TensorRT, built when the key changed."""
    trt = import_tensorrt()
    target = current_target(trt, device)
    precision: Precision = "fp16" if fp16 else "fp32"
    declared = onnx_inputs(onnx_path)
    # the shapes the engine is built for (a dynamic batch fixed by input_shapes) are part
    # of its key: otherwise a plan for another max_faces would be a cache hit
    shapes = profile_shapes(declared, input_shapes)
    expected = expected_record(onnx_path, target, precision, inputs={**declared, **shapes})
    timing_path = timing_cache_path(cache_dir, target)
    path, _ = ensure_engine(
        expected,
        cache_dir,
        lambda: _build_plan(trt, onnx_path, precision, timing_path, input_shapes, workspace_mb),
    )
    return path


# ---------------------------------------------------------------- running a plan


class TrtNetwork:
    """One deserialised engine with its I/O buffers preallocated as torch CUDA tensors.

    `run` copies inputs into the input buffers (skipped when the caller already wrote into
    `inputs[name]`) and enqueues the engine on the given torch stream; it never synchronises.
    The returned outputs are the engine's own buffers: read (or copy) them on that stream
    before the next `run` overwrites them.
    """

    def __init__(self, plan_path: Path, device: str = "cuda") -> None:
        trt = import_tensorrt()
        torch = importlib.import_module("torch")
        self._trt = trt
        self._runtime = trt.Runtime(_trt_logger(trt))
        self.engine = self._runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise EngineUnavailable(
                f"TensorRT cannot load {plan_path} (built for another GPU or TensorRT?); "
                "delete it to rebuild, or use engines: cuda"
            )
        self.context = self.engine.create_execution_context()
        self.specs = self._resolve_specs()
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        for spec in self.specs:
            buffer = torch.empty(spec.shape, dtype=torch_dtype(spec.dtype), device=device)
            (self.inputs if spec.is_input else self.outputs)[spec.name] = buffer
            self.context.set_tensor_address(spec.name, buffer.data_ptr())

    def _resolve_specs(self) -> list[TensorSpec]:
        """I/O tensors with concrete shapes: dynamic inputs take their profile's shape."""
        engine, mode_input = self.engine, self._trt.TensorIOMode.INPUT
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name in names:
            if engine.get_tensor_mode(name) == mode_input and -1 in tuple(
                engine.get_tensor_shape(name)
            ):
                _, opt, _ = engine.get_tensor_profile_shape(name, 0)
                self.context.set_input_shape(name, tuple(opt))
        return [
            TensorSpec(
                name,
                engine.get_tensor_mode(name) == mode_input,
                tuple(self.context.get_tensor_shape(name)),
                engine.get_tensor_dtype(name).name,
            )
            for name in names
        ]

    def run(
        self, inputs: Mapping[str, torch.Tensor], stream: torch.cuda.Stream
    ) -> dict[str, torch.Tensor]:
        given = {
            n: (tuple(t.shape), str(t.dtype).removeprefix("torch."), t.device.type)
            for n, t in inputs.items()
        }
        problems = input_problems(self.specs, given)
        if problems:
            raise ValueError("; ".join(problems))
        torch = importlib.import_module("torch")
        with torch.cuda.stream(stream):
            for name, tensor in inputs.items():
                buffer = self.inputs[name]
                if tensor.data_ptr() != buffer.data_ptr():
                    buffer.copy_(tensor, non_blocking=True)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineUnavailable("TensorRT failed to enqueue the engine (see the log)")
        return self.outputs
