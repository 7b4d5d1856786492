"""The attention mesh's MediaPipe custom ops, as translated to torch, against plain
reference implementations of their definitions (MediaPipe's
mediapipe/util/tflite/operations, version 2), and the model file's own wiring.

LiteRT cannot run the attention mesh (it lacks these ops), so the network as a whole is
checked through the full landmark path against MediaPipe's FaceMesh in
tests/test_landmark_path.py; here each op is checked on its own, on random inputs, including
the cases a face rarely gives (a turned face, samples falling off the feature map).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engines.landmarks.nets import (
    LandmarksToTransformMatrix,
    TransformLandmarks,
    TransformTensorBilinear,
    build_network,
    example_input,
    model_path,
)
from engines.landmarks.tflite_graph import Operator, read_tflite
from engines.landmarks.torch_path import LEFT_EYE_REFINED, LIPS_REFINED, RIGHT_EYE_REFINED


def _custom_ops(op_type: str) -> list[Operator]:
    graph = read_tflite(model_path("face_landmark_attention"))
    return [op for op in graph.operators if op.op_type == f"CUSTOM ({op_type})"]


def _operator(op_type: str, options: dict, inputs=(0,)) -> Operator:
    return Operator(0, f"CUSTOM ({op_type})", tuple(inputs), (9,), options, 2)


# --- reference implementations, step by step as the ops define them ---------------------


def _rotation(angle: float) -> np.ndarray:
    return np.array(
        [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]]
    )


def _translation4(x: float, y: float) -> np.ndarray:
    matrix = np.eye(4)
    matrix[0, 3], matrix[1, 3] = x, y
    return matrix


def reference_transform_matrix(points: np.ndarray, options: dict) -> np.ndarray:
    """Landmarks2TransformMatrix v2 for one (P, 3) point set: a 4x4 matrix."""
    left, right = points[options["left_rotation_idx"]], points[options["right_rotation_idx"]]
    rotation = options["target_rotation_radians"] - math.atan2(
        right[1] - left[1], right[0] - left[0]
    )
    subset = [points[i] for i in options["subset_idxs"]]
    turned = [_rotation(rotation) @ np.array([p[0], p[1], 1.0]) for p in subset]
    low, high = np.min(turned, axis=0), np.max(turned, axis=0)
    width, height = high[0] - low[0], high[1] - low[1]
    center = _rotation(-rotation) @ np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, 1])
    matrix = _translation4(center[0], center[1])
    turn = np.eye(4)
    turn[:2, :2] = _rotation(-rotation)[:2, :2]
    matrix = matrix @ turn
    scale = np.diag(
        [
            options["scale_x"] * width / options["output_width"],
            options["scale_y"] * height / options["output_height"],
            1,
            1,
        ]
    )
    matrix = matrix @ scale
    return matrix @ _translation4(-options["output_width"] / 2, -options["output_height"] / 2)


def reference_bilinear(features: np.ndarray, matrix: np.ndarray, size: tuple) -> np.ndarray:
    """TransformTensorBilinear v2 for one (H, W, C) map: an (h, w, C) patch."""
    in_h, in_w, channels = features.shape
    row_x, row_y = matrix[0].copy(), matrix[1].copy()
    row_x[3] += row_x[0] * 0.5 + row_x[1] * 0.5 - 0.5
    row_y[3] += row_y[0] * 0.5 + row_y[1] * 0.5 - 0.5
    out = np.zeros((*size, channels))

    def read(y: int, x: int) -> np.ndarray:
        inside = 0 <= y < in_h and 0 <= x < in_w
        return features[y, x] if inside else np.zeros(channels)

    for out_y in range(size[0]):
        for out_x in range(size[1]):
            coord = np.array([out_x, out_y, 0.0, 1.0])
            x, y = row_x @ coord, row_y @ coord
            if x < 0 or x > in_w - 1 or y < 0 or y > in_h - 1:
                continue
            x0, y0 = math.floor(x), math.floor(y)
            fx, fy = x - x0, y - y0
            upper = (1 - fx) * read(y0, x0) + fx * read(y0, x0 + 1)
            lower = (1 - fx) * read(y0 + 1, x0) + fx * read(y0 + 1, x0 + 1)
            out[out_y, out_x] = fy * lower + (1 - fy) * upper
    return out


# --- the ops -------------------------------------------------------------------------------


def test_transform_matrix_matches_its_definition():
    (lips, *_) = _custom_ops("Landmarks2TransformMatrix")
    options = lips.options
    module = LandmarksToTransformMatrix(lips, graph=None)
    generator = np.random.default_rng(3)
    points = generator.uniform(0, 48, (4, 468, 3)).astype(np.float32)
    # one upright pair of corners, one turned by ~150°: the rotation must follow
    points[1, options["right_rotation_idx"], :2] = points[1, options["left_rotation_idx"], :2]
    points[1, options["right_rotation_idx"], 0] += 10
    points[2, options["right_rotation_idx"], :2] = points[2, options["left_rotation_idx"], :2]
    points[2, options["right_rotation_idx"], :2] += (-8.7, -5.0)
    got = module(torch.from_numpy(points)).numpy()
    for index in range(len(points)):
        want = reference_transform_matrix(points[index].astype(np.float64), options)
        np.testing.assert_allclose(got[index], want, atol=2e-4, err_msg=f"point set {index}")


def test_patch_sampling_matches_its_definition():
    (op, *_) = _custom_ops("TransformTensorBilinear")
    module = TransformTensorBilinear(op, graph=None)
    generator = np.random.default_rng(4)
    features = generator.normal(size=(2, 48, 48, 5)).astype(np.float32)
    angle = 0.4
    matrices = np.zeros((2, 4, 4), np.float32)
    for index, (scale, shift) in enumerate(((1.3, (10.0, 12.0)), (2.5, (-6.0, 30.0)))):
        matrices[index, :2, :2] = scale * np.array(
            [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
        )
        matrices[index, :2, 3] = shift
        matrices[index, 2, 2] = matrices[index, 3, 3] = 1
    got = module(
        torch.from_numpy(features).permute(0, 3, 1, 2), torch.from_numpy(matrices)
    ).permute(0, 2, 3, 1)
    assert got.shape == (2, 16, 16, 5)
    for index in range(2):
        want = reference_bilinear(features[index], matrices[index], (16, 16))
        np.testing.assert_allclose(got[index].numpy(), want, atol=1e-4)
    # the second patch hangs off the map's left edge: zeros there, samples elsewhere
    outside = (want == 0).all(-1)
    assert 0 < outside.sum() < outside.size


def test_landmark_transform_matches_its_definition():
    module = TransformLandmarks(_operator("TransformLandmarks", {}, (0, 1)), (0, 1))
    generator = np.random.default_rng(5)
    points = generator.uniform(0, 16, (3, 71, 2)).astype(np.float32)
    matrices = generator.normal(size=(3, 4, 4)).astype(np.float32)
    got = module(torch.from_numpy(points), torch.from_numpy(matrices)).numpy()
    homogeneous = np.concatenate(
        [points, np.zeros_like(points[..., :1]), np.ones_like(points[..., :1])], -1
    )
    want = np.einsum("nij,npj->npi", matrices[:, :2, :], homogeneous)
    np.testing.assert_allclose(got, want, atol=1e-4)


# --- the model file's wiring ---------------------------------------------------------------


def test_refined_indices_are_the_models_own():
    """The lips and eye points replace the mesh points the model cut its patches around."""
    subsets = [tuple(op.options["subset_idxs"]) for op in _custom_ops("Landmarks2TransformMatrix")]
    assert subsets == [LIPS_REFINED, RIGHT_EYE_REFINED, LEFT_EYE_REFINED]


def test_attention_net_takes_batches():
    """Two faces in one call give what each gives alone: the custom ops are per face."""
    torch.set_num_threads(1)
    net = build_network("face_landmark_attention")
    batch = example_input("face_landmark_attention", batch=2, seed=7)
    with torch.inference_mode():
        together = net(batch)
        alone = net(batch[1:2])
    for name, both, one in zip(net.output_names, together, alone, strict=True):
        assert both.shape[0] == 2
        assert torch.allclose(both[1:], one, atol=1e-4), name


def test_a_reordered_model_is_refused(monkeypatch):
    from engines.landmarks import nets as landmark_nets

    spec = landmark_nets.NETWORKS["face_landmark_attention"]
    swapped = (spec.graph_output_names[1], spec.graph_output_names[0], *spec.graph_output_names[2:])
    monkeypatch.setitem(
        landmark_nets.NETWORKS,
        "face_landmark_attention",
        landmark_nets.NetworkSpec(
            spec.name,
            spec.model_file,
            spec.input_size,
            spec.input_range,
            spec.output_names,
            swapped,
        ),
    )
    with pytest.raises(ValueError, match=r"outputs .*output_mesh_identity.*expected"):
        build_network("face_landmark_attention")
