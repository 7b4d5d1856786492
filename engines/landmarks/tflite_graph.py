"""A TFLite flatbuffer read into plain Python: tensors with their (fp32) data and operators
with their builtin options.

This is what lets us rebuild MediaPipe's networks as torch modules (engines/landmarks/nets.py)
without the TFLite runtime. Weights stored as fp16 (or int8) behind DEQUANTIZE operators are
dequantized here, once, so the operator list only holds the ops that compute on activations.
Anything we do not understand fails loudly with the file and the op named: a silently
misread graph would give plausible but wrong landmarks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tflite
from flatbuffers import flexbuffers
from tflite.BuiltinOperator import BuiltinOperator
from tflite.TensorType import TensorType

log = logging.getLogger(__name__)

_OP_NAMES: dict[int, str] = {
    code: name for name, code in vars(BuiltinOperator).items() if not name.startswith("_")
}
_TYPE_NAMES: dict[int, str] = {
    code: name for name, code in vars(TensorType).items() if not name.startswith("_")
}
_NUMPY_TYPES: dict[int, type] = {
    TensorType.FLOAT32: np.float32,
    TensorType.FLOAT16: np.float16,
    TensorType.INT32: np.int32,
    TensorType.INT64: np.int64,
    TensorType.UINT8: np.uint8,
    TensorType.INT8: np.int8,
    TensorType.INT16: np.int16,
}
_ACTIVATIONS = {0: "none", 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh"}
_PADDINGS = {0: "same", 1: "valid"}


class TFLiteGraphError(ValueError):
    """The file is not a TFLite model we can read, or uses an op we do not support."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor: its shape, its stored type and, for constants, its data (floats as fp32)."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    data: np.ndarray | None = None

    @property
    def is_constant(self) -> bool:
        return self.data is not None


@dataclass(frozen=True, slots=True)
class Operator:
    """One operator: its type name (e.g. CONV_2D, or CUSTOM (Name) for MediaPipe's own ops),
    tensor indices, options (builtin options, or a custom op's flexbuffer map) and version."""

    index: int
    op_type: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)
    version: int = 1


@dataclass(frozen=True, slots=True)
class TFLiteGraph:
    """The first subgraph of a model, weights dequantized, DEQUANTIZE ops folded away."""

    path: Path
    tensors: list[TensorInfo]
    operators: list[Operator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def tensor(self, index: int) -> TensorInfo:
        return self.tensors[index]

    def constant(self, index: int) -> np.ndarray:
        """The data of a constant tensor (weights, biases, paddings, shapes)."""
        data = self.tensors[index].data
        if data is None:
            raise TFLiteGraphError(
                f"{self.path.name}: tensor {index} ({self.tensors[index].name}) "
                "is expected to be a constant"
            )
        return data

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {self.tensors[i].name: self.tensors[i].shape for i in self.inputs}

    @property
    def output_names(self) -> list[str]:
        return [self.tensors[i].name for i in self.outputs]


def _read_options(options_class: type, table: Any, fields: dict[str, str]) -> dict[str, Any]:
    """Read the named getters of a builtin options table into a dict."""
    options = options_class()
    options.Init(table.Bytes, table.Pos)
    return {key: getattr(options, getter)() for key, getter in fields.items()}


_ACTIVATION = {"activation": "FusedActivationFunction"}
_WINDOW = {"padding": "Padding", "stride_h": "StrideH", "stride_w": "StrideW"}
_DILATION = {"dilation_h": "DilationHFactor", "dilation_w": "DilationWFactor"}


def _options_reader(options_class: type, fields: dict[str, str]) -> Callable[[Any], dict]:
    """A reader of one builtin options table: the named getters, enums as names."""
    return lambda table: _named_enums(_read_options(options_class, table, fields))


def _reshape_options(table: Any) -> dict[str, Any]:
    options = tflite.ReshapeOptions()
    options.Init(table.Bytes, table.Pos)
    if options.NewShapeIsNone() or options.NewShapeLength() == 0:
        return {}
    return {"new_shape": tuple(int(v) for v in options.NewShapeAsNumpy())}


def _no_options(table: Any) -> dict[str, Any]:
    return {}


def _named_enums(opts: dict[str, Any]) -> dict[str, Any]:
    """Padding and activation codes as names, so the converter cannot misread a number."""
    if "padding" in opts:
        opts["padding"] = _PADDINGS[opts["padding"]]
    if "activation" in opts:
        opts["activation"] = _ACTIVATIONS.get(opts["activation"], f"code {opts['activation']}")
    return opts


def _strided_slice_options(table: Any) -> dict[str, Any]:
    options = tflite.StridedSliceOptions()
    options.Init(table.Bytes, table.Pos)
    masks = {
        "begin_mask": options.BeginMask(),
        "end_mask": options.EndMask(),
        "ellipsis_mask": options.EllipsisMask(),
        "new_axis_mask": options.NewAxisMask(),
        "shrink_axis_mask": options.ShrinkAxisMask(),
    }
    return masks


def _custom_options(op: Any) -> dict[str, Any]:
    """A custom op's options: MediaPipe stores them as a flexbuffer map."""
    raw = op.CustomOptionsAsNumpy()
    if isinstance(raw, int) or raw.size == 0:  # the getter gives 0 when there are none
        return {}
    options = flexbuffers.Loads(raw.tobytes())
    if not isinstance(options, dict):
        raise TFLiteGraphError(f"custom options are a {type(options).__name__}, not a map")
    return options


# The attention face mesh's own ops (MediaPipe's, not TFLite's), by the version we
# translate: version 1 of Landmarks2TransformMatrix computes a different matrix.
CUSTOM_OPS = {
    "CUSTOM (Landmarks2TransformMatrix)": 2,
    "CUSTOM (TransformTensorBilinear)": 2,
    "CUSTOM (TransformLandmarks)": 2,
}

# The ops our MediaPipe models use, and how to read each one's options.
_POOL_OPTIONS = _options_reader(
    tflite.Pool2DOptions,
    _WINDOW | {"filter_h": "FilterHeight", "filter_w": "FilterWidth"} | _ACTIVATION,
)
_OPTION_READERS = {
    "CONV_2D": _options_reader(tflite.Conv2DOptions, _WINDOW | _DILATION | _ACTIVATION),
    "DEPTHWISE_CONV_2D": _options_reader(
        tflite.DepthwiseConv2DOptions,
        _WINDOW | _DILATION | {"depth_multiplier": "DepthMultiplier"} | _ACTIVATION,
    ),
    "MAX_POOL_2D": _POOL_OPTIONS,
    "AVERAGE_POOL_2D": _POOL_OPTIONS,
    "ADD": _options_reader(tflite.AddOptions, _ACTIVATION),
    "MUL": _options_reader(tflite.MulOptions, _ACTIVATION),
    "STRIDED_SLICE": _strided_slice_options,
    "CONCATENATION": _options_reader(tflite.ConcatenationOptions, {"axis": "Axis"} | _ACTIVATION),
    "RESHAPE": _reshape_options,
    "PAD": _no_options,
    "PRELU": _no_options,
    "RELU": _no_options,
    "RELU6": _no_options,
    "LOGISTIC": _no_options,
    "DEQUANTIZE": _no_options,
}
SUPPORTED_OPS = frozenset(_OPTION_READERS) | frozenset(CUSTOM_OPS)


def _load_model(path: Path) -> tuple[bytes, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TFLiteGraphError(f"{path}: cannot read the model: {exc}") from exc
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise TFLiteGraphError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier)")
    return data, tflite.Model.GetRootAsModel(data, 0)


def _buffer_bytes(model: Any, data: bytes, buffer_index: int) -> bytes:
    """A buffer's bytes, inline or (models over 2 GB) at an offset in the file."""
    buffer = model.Buffers(buffer_index)
    if buffer is None:
        return b""
    if buffer.DataLength() > 0:
        return buffer.DataAsNumpy().tobytes()
    offset, size = buffer.Offset(), buffer.Size()
    if offset > 1 and size > 0:
        return data[offset : offset + size]
    return b""


def _dequantized(raw: np.ndarray, quantization: Any) -> np.ndarray:
    """Stored weights as fp32: fp16 directly, integers through their scale and zero point."""
    if raw.dtype == np.float16 or raw.dtype == np.float32:
        return raw.astype(np.float32)
    if quantization is None or quantization.ScaleLength() == 0:
        raise TFLiteGraphError("integer tensor behind DEQUANTIZE without a scale")
    scale = quantization.ScaleAsNumpy().astype(np.float32)
    zero = quantization.ZeroPointAsNumpy().astype(np.float32)
    axis = quantization.QuantizedDimension()
    if scale.size > 1:  # per-channel
        shape = [1] * raw.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (raw.astype(np.float32) - zero) * scale


def _read_tensor(model: Any, subgraph: Any, data: bytes, index: int, path: Path) -> TensorInfo:
    tensor = subgraph.Tensors(index)
    shape = tuple(int(v) for v in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
    type_name = _TYPE_NAMES.get(tensor.Type(), f"type {tensor.Type()}")
    raw = _buffer_bytes(model, data, tensor.Buffer())
    array = None
    if raw:
        numpy_type = _NUMPY_TYPES.get(tensor.Type())
        if numpy_type is None:
            raise TFLiteGraphError(f"{path.name}: tensor {index} has unsupported type {type_name}")
        array = np.frombuffer(raw, numpy_type)
        expected = int(np.prod(shape)) if shape else 1
        if array.size != expected:
            raise TFLiteGraphError(
                f"{path.name}: tensor {index} holds {array.size} values for shape {shape}"
            )
        array = array.reshape(shape).copy()
        if array.dtype == np.float16:
            array = array.astype(np.float32)
    return TensorInfo(index, tensor.Name().decode(), shape, type_name.lower(), array)


def _op_type(model: Any, operator: Any) -> str:
    code = model.OperatorCodes(operator.OpcodeIndex())
    # Since schema v3a the real code may sit in either field: the larger one is right.
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    name = _OP_NAMES.get(builtin, f"builtin {builtin}")
    if name == "CUSTOM":
        custom = code.CustomCode()
        name = f"CUSTOM ({custom.decode() if custom else '?'})"
    return name


def _fold_dequantize(subgraph: Any, op: Any, tensors: list[TensorInfo], path: Path) -> None:
    """Replace the output of a DEQUANTIZE of a constant by the dequantized constant."""
    source, target = int(op.Inputs(0)), int(op.Outputs(0))
    raw = tensors[source].data
    if raw is None:
        raise TFLiteGraphError(f"{path.name}: DEQUANTIZE of a non-constant tensor {source}")
    values = _dequantized(raw, subgraph.Tensors(source).Quantization())
    old = tensors[target]
    tensors[target] = TensorInfo(target, old.name, old.shape, "float32", values)


def _read_operator(model: Any, op: Any, index: int, path: Path) -> Operator:
    op_type = _op_type(model, op)
    version = model.OperatorCodes(op.OpcodeIndex()).Version()
    if op_type in CUSTOM_OPS:
        if version != CUSTOM_OPS[op_type]:
            raise TFLiteGraphError(
                f"{path.name}: operator {index} is {op_type} version {version}; only "
                f"version {CUSTOM_OPS[op_type]} is supported"
            )
        options = _custom_options(op)
    else:
        reader = _OPTION_READERS.get(op_type)
        if reader is None:
            raise TFLiteGraphError(
                f"{path.name}: operator {index} is {op_type}, which is not supported "
                f"(supported: {', '.join(sorted(SUPPORTED_OPS))})"
            )
        table = op.BuiltinOptions()
        options = reader(table) if table is not None else {}
    inputs = tuple(int(i) for i in op.InputsAsNumpy()) if op.InputsLength() else ()
    outputs = tuple(int(i) for i in op.OutputsAsNumpy()) if op.OutputsLength() else ()
    return Operator(index, op_type, inputs, outputs, options, version)


def read_tflite(path: str | Path) -> TFLiteGraph:
    """Read a .tflite file's first subgraph; raises TFLiteGraphError on anything unexpected."""
    path = Path(path)
    data, model = _load_model(path)
    try:
        return _read_graph(path, data, model)
    except TFLiteGraphError:
        raise
    except Exception as exc:  # a corrupted flatbuffer fails anywhere, in any way
        raise TFLiteGraphError(f"{path}: corrupted TFLite model ({exc!r})") from exc


def _read_graph(path: Path, data: bytes, model: Any) -> TFLiteGraph:
    if model.SubgraphsLength() != 1:
        raise TFLiteGraphError(f"{path.name}: {model.SubgraphsLength()} subgraphs, expected 1")
    subgraph = model.Subgraphs(0)
    tensors = [
        _read_tensor(model, subgraph, data, i, path) for i in range(subgraph.TensorsLength())
    ]
    operators: list[Operator] = []
    for index in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(index)
        parsed = _read_operator(model, op, index, path)
        if parsed.op_type == "DEQUANTIZE":
            _fold_dequantize(subgraph, op, tensors, path)
        else:
            operators.append(parsed)
    inputs = tuple(int(i) for i in subgraph.InputsAsNumpy())
    outputs = tuple(int(i) for i in subgraph.OutputsAsNumpy())
    graph = TFLiteGraph(path, tensors, operators, inputs, outputs)
    log.debug("%s: %d operators, %d tensors", path.name, len(operators), len(tensors))
    return graph
