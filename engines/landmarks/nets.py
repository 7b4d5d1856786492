"""MediaPipe's face detector, face meshes (classic and attention) and iris networks as
torch modules.

The modules are built from the TFLite graphs shipped inside the mediapipe package (read by
engines/landmarks/tflite_graph.py), op by op, with the same weights. That keeps one source of truth
for the weights (the wheel we already depend on) and gives us networks that run on CUDA,
trace, and export to ONNX/TensorRT. Activations are NCHW inside; the TFLite layout-sensitive
ops (PAD, RESHAPE, CONCATENATION, STRIDED_SLICE) are translated from NHWC where they are
built. The attention mesh's three MediaPipe custom ops (a patch matrix from landmarks,
bilinear patch sampling, landmarks through a matrix) are written here from their
definitions, batched, in ops that ONNX and TensorRT know (atan2, grid_sample, matmul).

Inputs are float NCHW images, normalised as each model was trained (see NetworkSpec):
the detector takes [-1, 1] (its metadata: mean 127.5, std 127.5), the face mesh [0, 1]
(mean 0, std 255) and the iris model [0, 1] (MediaPipe feeds it with zero_center off).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.landmarks.tflite_graph import Operator, TFLiteGraph, TFLiteGraphError, read_tflite

log = logging.getLogger(__name__)


INPUT_NAME = "image"  # every network's one input, in exports and engines alike


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """Where a network's weights live and what it takes and gives."""

    name: str
    model_file: str  # relative to the mediapipe package
    input_size: int
    input_range: tuple[float, float]
    output_names: tuple[str, ...]
    # the file's own output tensor names, in output order, where we rename them: checked
    # when the network is built, so a reordered model fails instead of misreading
    graph_output_names: tuple[str, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.input_size, self.input_size)


NETWORKS: dict[str, NetworkSpec] = {
    spec.name: spec
    for spec in (
        NetworkSpec(
            "face_detector",
            "modules/face_detection/face_detection_short_range.tflite",
            128,
            (-1.0, 1.0),
            ("regressors", "classificators"),
        ),
        NetworkSpec(
            "face_landmark",
            "modules/face_landmark/face_landmark.tflite",
            192,
            (0.0, 1.0),
            ("landmarks", "face_flag"),
        ),
        NetworkSpec(
            # FaceMesh(refine_landmarks=True)'s model: the mesh plus lips, eyes and irises
            # from patches of its own feature map. "left" is MediaPipe's: the image's left,
            # the subject's right eye.
            "face_landmark_attention",
            "modules/face_landmark/face_landmark_with_attention.tflite",
            192,
            (0.0, 1.0),
            ("landmarks", "lips", "left_eye", "right_eye", "left_iris", "right_iris", "face_flag"),
            (
                "output_mesh_identity",
                "output_lips",
                "output_left_eye",
                "output_right_eye",
                "output_left_iris",
                "output_right_iris",
                "conv_faceflag",
            ),
        ),
        NetworkSpec(
            "iris_landmark",
            "modules/iris_landmark/iris_landmark.tflite",
            64,
            (0.0, 1.0),
            ("eye_contour", "iris"),
        ),
    )
}


# The networks each face model of the landmark path (engines/landmarks/torch_path.py) runs.
MESH_MODEL_NETWORKS: dict[str, tuple[str, ...]] = {
    "attention": ("face_detector", "face_landmark_attention"),
    "iris": ("face_detector", "face_landmark", "iris_landmark"),
}


@cache
def mediapipe_dir() -> Path:
    """The installed mediapipe package (found without importing it: that is slow)."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("mediapipe is not installed: its .tflite models are needed")
    return Path(next(iter(spec.submodule_search_locations)))


def model_path(name: str) -> Path:
    return mediapipe_dir() / NETWORKS[name].model_file


def _activation(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "none":
        return x
    if kind == "relu":
        return F.relu(x)
    if kind == "relu6":
        return F.relu6(x)
    if kind == "relu_n1_to_1":
        return x.clamp(-1.0, 1.0)
    if kind == "tanh":
        return torch.tanh(x)
    raise ValueError(f"fused activation {kind!r} is not supported")


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite SAME padding (before, after): the extra pixel, if any, goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _spatial_padding(
    op: Operator, in_shape: Sequence[int], kernel: tuple[int, int]
) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) for an NHWC input shape under the op's padding scheme."""
    if op.options["padding"] == "valid":
        return (0, 0, 0, 0)
    dil_h, dil_w = op.options.get("dilation_h", 1), op.options.get("dilation_w", 1)
    top, bottom = _same_padding(in_shape[1], kernel[0], op.options["stride_h"], dil_h)
    left, right = _same_padding(in_shape[2], kernel[1], op.options["stride_w"], dil_w)
    return (left, right, top, bottom)


class GraphOp(nn.Module):
    """One TFLite operator; `inputs`/`outputs` are the graph's tensor indices."""

    def __init__(self, op: Operator, inputs: Sequence[int]):
        super().__init__()
        self.op_type = op.op_type
        self.inputs = tuple(inputs)
        self.outputs = op.outputs
        self.activation = op.options.get("activation", "none")


class Conv(GraphOp):
    """CONV_2D and DEPTHWISE_CONV_2D: OHWI (resp. 1HW(I·M)) weights to torch's OIHW."""

    def __init__(self, op: Operator, graph: TFLiteGraph):
        super().__init__(op, op.inputs[:1])
        weight = graph.constant(op.inputs[1])
        bias = graph.constant(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        in_shape = graph.tensor(op.inputs[0]).shape
        in_channels = in_shape[3]
        if op.op_type == "DEPTHWISE_CONV_2D":
            # TFLite: output channel c = i * multiplier + m, which is torch's group order.
            torch_weight = weight.transpose(3, 0, 1, 2)  # (I·M, 1, kh, kw)
            groups = in_channels
        else:
            torch_weight = weight.transpose(0, 3, 1, 2)  # (O, I, kh, kw)
            groups = 1
        kernel = (weight.shape[1], weight.shape[2])
        self.pad = _spatial_padding(op, in_shape, kernel)
        self.conv = nn.Conv2d(
            in_channels,
            torch_weight.shape[0],
            kernel,
            stride=(op.options["stride_h"], op.options["stride_w"]),
            dilation=(op.options.get("dilation_h", 1), op.options.get("dilation_w", 1)),
            groups=groups,
            bias=bias is not None,
        )
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(torch_weight)))
            if bias is not None:
                self.conv.bias.copy_(torch.from_numpy(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        return _activation(self.conv(x), self.activation)


class Pool(GraphOp):
    """MAX_POOL_2D / AVERAGE_POOL_2D; SAME padding never wins a max (nor counts in a mean)."""

    def __init__(self, op: Operator, graph: TFLiteGraph):
        super().__init__(op, op.inputs[:1])
        self.kernel = (op.options["filter_h"], op.options["filter_w"])
        self.stride = (op.options["stride_h"], op.options["stride_w"])
        self.pad = _spatial_padding(op, graph.tensor(op.inputs[0]).shape, self.kernel)
        self.is_max = op.op_type == "MAX_POOL_2D"
        if not self.is_max and any(self.pad):
            raise TFLiteGraphError(
                f"{graph.path.name}: operator {op.index}: padded AVERAGE_POOL_2D is not supported"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_max:
            if any(self.pad):
                x = F.pad(x, self.pad, value=float("-inf"))
            y = F.max_pool2d(x, self.kernel, self.stride)
        else:
            y = F.avg_pool2d(x, self.kernel, self.stride)
        return _activation(y, self.activation)


class Pad(GraphOp):
    """PAD with constant NHWC paddings, as torch's (W, H, C) order on NCHW."""

    def __init__(self, op: Operator, graph: TFLiteGraph):
        super().__init__(op, op.inputs[:1])
        pads = graph.constant(op.inputs[1]).astype(int).tolist()
        if len(pads) != 4 or pads[0] != [0, 0]:
            raise TFLiteGraphError(
                f"{graph.path.name}: operator {op.index}: PAD {pads} is not a 4D non-batch pad"
            )
        (top, bottom), (left, right), (front, back) = pads[1], pads[2], pads[3]
        self.pad = (left, right, top, bottom, front, back)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad)


class Add(GraphOp):
    def __init__(self, op: Operator, graph: TFLiteGraph):
        super().__init__(op, op.inputs)
        for index in op.inputs:
            if graph.tensor(index).is_constant:
                raise TFLiteGraphError(
                    f"{graph.path.name}: operator {op.index}: ADD of a constant is not supported"
                )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _activation(a + b, self.activation)


class Mul(GraphOp):
    """MUL of an activation by a constant (a scalar, or a same-rank tensor off the 4D
    layouts): the attention mesh scales its points and its crop matrices this way."""

    def __init__(self, op: Operator, graph: TFLiteGraph):
        variables = [i for i in op.inputs if not graph.tensor(i).is_constant]
        constants = [i for i in op.inputs if graph.tensor(i).is_constant]
        super().__init__(op, variables)
        if len(variables) != 1 or len(constants) != 1:
            raise TFLiteGraphError(
                f"{graph.path.name}: operator {op.index}: MUL needs one constant operand"
            )
        factor = graph.constant(constants[0])
        rank = len(graph.tensor(variables[0]).shape)
        if rank == 4 and factor.size > 1:
            raise TFLiteGraphError(
                f"{graph.path.name}: operator {op.index}: MUL of a 4D tensor by {factor.shape}"
            )
        self.register_buffer("factor", torch.from_numpy(factor.astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _activation(x * self.factor, self.activation)


class StridedSlice(GraphOp):
    """STRIDED_SLICE with constant begin/end/strides in NHWC order; the batch axis must be
    taken whole (it is 1 in the file, any size here)."""

    def __init__(self, op: Operator, graph: TFLiteGraph):
        super().__init__(op, op.inputs[:1])
        unsupported = ("ellipsis_mask", "new_axis_mask", "shrink_axis_mask")
        if any(op.options.get(mask) for mask in unsupported):
            raise TFLiteGraphError(
                f"{graph.path.name}: operator {op.index}: STRIDED_SLICE masks {op.options}"
            )
        begin, end, strides = (graph.constant(i).astype(int).tolist() for i in op.inputs[1:4])
        shape = graph.tensor(op.inputs[0]).shape
        slices = []
        for axis, (b, e, s) in enumerate(zip(begin, end, strides, strict=True)):
            start = None if op.options.get("begin_mask", 0) >> axis & 1 else b
            stop = None if op.options.get("end_mask", 0) >> axis & 1 else e
            slices.append(slice(start, stop, s))
        whole_batch = slice(None, shape[0], 1), slice(0, shape[0], 1), slice(None, None, 1)
        if slices[0] not in whole_batch:
            raise TFLiteGraphError(
                f"{graph.path.name}: operator {op.index}: STRIDED_SLICE cuts the batch axis"
            )
        self.slices = (slice(None), *slices[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _to_nchw(_to_nhwc(x)[self.slices])


class LandmarksToTransformMatrix(GraphOp):
    """MediaPipe's Landmarks2TransformMatrix (v2): from (N, P, 3) points, the (N, 4, 4)
    matrix that maps an output_width x output_height patch onto the region around a subset
    of points (their box in a frame turned so that left → right is level, times scale_x/y).
    The attention mesh uses it to cut its lips and eye patches out of a feature map."""

    def __init__(self, op: Operator, graph: TFLiteGraph):
        super().__init__(op, op.inputs[:1])
        options = op.options
        self.left, self.right = options["left_rotation_idx"], options["right_rotation_idx"]
        self.target_rotation = float(options.get("target_rotation_radians", 0.0))
        self.scale = (
            float(options["scale_x"]) / options["output_width"],
            float(options["scale_y"]) / options["output_height"],
        )
        self.half = (options["output_width"] / 2.0, options["output_height"] / 2.0)
        subset = [int(i) for i in options["subset_idxs"]]
        self.register_buffer("subset", torch.tensor(subset, dtype=torch.long))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        xy = points[..., :2]
        delta = xy[:, self.right] - xy[:, self.left]
        rotation = self.target_rotation - torch.atan2(delta[:, 1], delta[:, 0])
        cos, sin = torch.cos(rotation)[:, None], torch.sin(rotation)[:, None]
        subset = xy[:, self.subset]
        level_x = cos * subset[..., 0] - sin * subset[..., 1]
        level_y = sin * subset[..., 0] + cos * subset[..., 1]
        low_x, high_x = level_x.amin(1), level_x.amax(1)
        low_y, high_y = level_y.amin(1), level_y.amax(1)
        mid_x, mid_y = (low_x + high_x) / 2, (low_y + high_y) / 2
        cos, sin = cos[:, 0], sin[:, 0]
        # back to the frame: rotation by -rotation
        center_x = cos * mid_x + sin * mid_y
        center_y = -sin * mid_x + cos * mid_y
        scale_x = (high_x - low_x) * self.scale[0]
        scale_y = (high_y - low_y) * self.scale[1]
        # patch p → center + R(-rotation) · diag(scale) · (p - half)
        a00, a01 = cos * scale_x, sin * scale_y
        a10, a11 = -sin * scale_x, cos * scale_y
        t0 = center_x - a00 * self.half[0] - a01 * self.half[1]
        t1 = center_y - a10 * self.half[0] - a11 * self.half[1]
        zero, one = torch.zeros_like(a00), torch.ones_like(a00)
        rows = (
            (a00, a01, zero, t0),
            (a10, a11, zero, t1),
            (zero, zero, one, zero),
            (zero, zero, zero, one),
        )
        return torch.stack([torch.stack(row, -1) for row in rows], 1)


class TransformTensorBilinear(GraphOp):
    """MediaPipe's TransformTensorBilinear (v2): an output_height x output_width patch of an
    (N, C, H, W) map sampled bilinearly through each (N, 4, 4) matrix, pixel centres
    aligned; a sample outside the map's pixel centres is zero."""

    def __init__(self, op: Operator, graph: TFLiteGraph):
        super().__init__(op, op.inputs[:2])
        height, width = op.options["output_height"], op.options["output_width"]
        ys, xs = torch.meshgrid(
            torch.arange(height, dtype=torch.float32),
            torch.arange(width, dtype=torch.float32),
            indexing="ij",
        )
        self.register_buffer("pixels", torch.stack([xs, ys], -1).reshape(1, -1, 2))
        self.out_size = (height, width)

    def forward(self, features: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        in_h, in_w = features.shape[-2:]
        linear = matrix[:, :2, :2]
        # the op's align-corners correction: sample at T·(p + 0.5) - 0.5
        shift = matrix[:, :2, 3] + 0.5 * linear.sum(-1) - 0.5
        coords = self.pixels @ linear.transpose(1, 2) + shift[:, None, :]  # (N, HW, 2)
        x, y = coords[..., 0], coords[..., 1]
        inside = (x >= 0) & (x <= in_w - 1) & (y >= 0) & (y <= in_h - 1)
        grid = torch.stack([2 * x / (in_w - 1) - 1, 2 * y / (in_h - 1) - 1], -1)
        grid = grid.reshape(-1, *self.out_size, 2)
        sampled = F.grid_sample(
            features, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        return sampled * inside.reshape(-1, 1, *self.out_size).to(sampled.dtype)


class TransformLandmarks(GraphOp):
    """MediaPipe's TransformLandmarks (v2): (N, P, 2 or 3) points' x, y through each
    (N, 4, 4) matrix (z, if any, unchanged)."""

    def forward(self, points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        xy = points[..., :2] @ matrix[:, :2, :2].transpose(1, 2) + matrix[:, None, :2, 3]
        return torch.cat([xy, points[..., 2:]], -1)


class PRelu(GraphOp):
    """PRELU with one slope per channel (stored as (1, 1, C))."""

    def __init__(self, op: Operator, graph: TFLiteGraph):
        super().__init__(op, op.inputs[:1])
        alpha = graph.constant(op.inputs[1])
        channels = graph.tensor(op.inputs[0]).shape[-1]
        if alpha.size != channels:
            raise TFLiteGraphError(
                f"{graph.path.name}: operator {op.index}: PRELU slope {alpha.shape} "
                f"is not per-channel for {channels} channels"
            )
        self.prelu = nn.PReLU(channels)
        with torch.no_grad():
            self.prelu.weight.copy_(torch.from_numpy(alpha.reshape(channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(x)


class Elementwise(GraphOp):
    """RELU, RELU6, LOGISTIC."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op_type == "RELU":
            return F.relu(x)
        if self.op_type == "RELU6":
            return F.relu6(x)
        return torch.sigmoid(x)


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1) if x.dim() == 4 else x


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


class Reshape(GraphOp):
    """RESHAPE to the output tensor's static shape (batch kept free), in TFLite's NHWC
    element order."""

    def __init__(self, op: Operator, graph: TFLiteGraph):
        super().__init__(op, op.inputs[:1])
        self.shape = tuple(graph.tensor(op.outputs[0]).shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _to_nhwc(x).reshape((-1, *self.shape))
        return _to_nchw(y)


class Concat(GraphOp):
    """CONCATENATION; an NHWC axis of a 4D tensor becomes its NCHW axis."""

    def __init__(self, op: Operator, graph: TFLiteGraph):
        super().__init__(op, op.inputs)
        rank = len(graph.tensor(op.outputs[0]).shape)
        axis = op.options["axis"] % rank
        self.axis = (0, 2, 3, 1)[axis] if rank == 4 else axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return _activation(torch.cat(xs, dim=self.axis), self.activation)


_OP_CLASSES: dict[str, type[GraphOp]] = {
    "CONV_2D": Conv,
    "DEPTHWISE_CONV_2D": Conv,
    "MAX_POOL_2D": Pool,
    "AVERAGE_POOL_2D": Pool,
    "PAD": Pad,
    "ADD": Add,
    "MUL": Mul,
    "STRIDED_SLICE": StridedSlice,
    "CUSTOM (Landmarks2TransformMatrix)": LandmarksToTransformMatrix,
    "CUSTOM (TransformTensorBilinear)": TransformTensorBilinear,
    "CUSTOM (TransformLandmarks)": TransformLandmarks,
    "PRELU": PRelu,
    "RELU": Elementwise,
    "RELU6": Elementwise,
    "LOGISTIC": Elementwise,
    "RESHAPE": Reshape,
    "CONCATENATION": Concat,
}


def _build_op(op: Operator, graph: TFLiteGraph) -> GraphOp:
    cls = _OP_CLASSES.get(op.op_type)
    if cls is None:
        raise TFLiteGraphError(
            f"{graph.path.name}: operator {op.index} ({op.op_type}) has no torch translation"
        )
    if cls is Elementwise:
        return Elementwise(op, op.inputs[:1])
    if cls is TransformLandmarks:
        return TransformLandmarks(op, op.inputs[:2])
    return cls(op, graph)


class TFLiteNet(nn.Module):
    """A TFLite graph run op by op in torch: NCHW float image in, the named outputs out.

    Outputs of shape (N, C, 1, 1) (the 1x1 heads of the landmark models) come back as
    (N, C); the detector's come back as TFLite gives them, (N, 896, 16) and (N, 896, 1).
    """

    def __init__(self, graph: TFLiteGraph, spec: NetworkSpec):
        super().__init__()
        if len(graph.inputs) != 1:
            raise TFLiteGraphError(f"{graph.path.name}: {len(graph.inputs)} inputs, expected 1")
        expected = spec.graph_output_names
        if expected is not None and tuple(graph.output_names) != expected:
            raise TFLiteGraphError(
                f"{graph.path.name}: outputs {graph.output_names}, expected {list(expected)}"
            )
        self.spec = spec
        self.output_names = spec.output_names
        self.input_index = graph.inputs[0]
        self.output_indices = graph.outputs
        # (N, C, 1, 1) heads flatten to (N, C); static sizes keep exports' shapes named
        self.flat_sizes = tuple(_flat_size(graph.tensor(i).shape) for i in graph.outputs)
        self.ops = nn.ModuleList(_build_op(op, graph) for op in graph.operators)
        self._check_wiring(graph)

    def _check_wiring(self, graph: TFLiteGraph) -> None:
        """Every op input must be produced before it is used (graphs are topologically
        sorted in TFLite, but a corrupted file might not be)."""
        known = {self.input_index}
        for op in self.ops:
            missing = [i for i in op.inputs if i not in known]
            if missing:
                raise TFLiteGraphError(
                    f"{graph.path.name}: {op.op_type} reads tensors {missing} before they exist"
                )
            known.update(op.outputs)
        missing = [i for i in self.output_indices if i not in known]
        if missing:
            raise TFLiteGraphError(f"{graph.path.name}: outputs {missing} are never computed")

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values: dict[int, torch.Tensor] = {self.input_index: image}
        for op in self.ops:
            result = op(*(values[i] for i in op.inputs))
            values[op.outputs[0]] = result
        return tuple(
            values[index] if size is None else values[index].reshape(-1, size)
            for index, size in zip(self.output_indices, self.flat_sizes, strict=True)
        )


def _flat_size(nhwc_shape: tuple[int, ...]) -> int | None:
    """Channels of a 1x1 NHWC output, None for any other shape."""
    if len(nhwc_shape) == 4 and nhwc_shape[1] == 1 and nhwc_shape[2] == 1:
        return nhwc_shape[3]
    return None


def build_network(name: str, path: str | Path | None = None, device: str = "cpu") -> TFLiteNet:
    """One network by name (see NETWORKS), from the mediapipe package unless `path` says."""
    spec = NETWORKS[name]
    graph = read_tflite(path if path is not None else model_path(name))
    net = TFLiteNet(graph, spec).eval().to(device)
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


def load_networks(device: str = "cpu", names: Sequence[str] | None = None) -> dict[str, TFLiteNet]:
    """The named networks (default: every one in NETWORKS), in eval mode, on `device`."""
    return {name: build_network(name, device=device) for name in (names or NETWORKS)}


def example_input(name: str, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A random input of the right shape and value range (for tracing and export)."""
    spec = NETWORKS[name]
    low, high = spec.input_range
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, *spec.input_shape[1:])
    return low + (high - low) * torch.rand(shape, generator=generator)
