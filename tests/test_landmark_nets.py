"""The torch ports of MediaPipe's networks against the TFLite runtime (LiteRT), on real faces:
the same input tensors must give the same outputs, to 1e-3 of the input size in pixels.
LiteRT cannot run the attention mesh (MediaPipe's custom ops): tests/test_attention_ops.py
checks those ops, tests/test_landmark_path.py the network within the path against
MediaPipe's own FaceMesh."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter
from conftest import SHARED_DATA

from engines.landmarks import tflite_graph
from engines.landmarks.nets import NETWORKS, TFLiteNet, load_networks, model_path
from engines.landmarks.tflite_graph import TFLiteGraphError, read_tflite
from engines.landmarks.torch_path import (
    LEFT_EYE_CORNERS,
    RIGHT_EYE_CORNERS,
    TorchFaceMesh,
    crop_rois,
    rois_from_points,
    to_float_image,
)

CLIPS = SHARED_DATA / "driving"


@pytest.fixture(scope="module")
def networks() -> dict[str, TFLiteNet]:
    torch.set_num_threads(1)
    return load_networks()


def _clip_frames() -> list[np.ndarray]:
    """The first frame of each dev clip; skips when ../shared/data is absent."""
    frames = []
    for path in sorted(CLIPS.glob("*.mp4")):
        capture = cv2.VideoCapture(str(path))
        ok, frame = capture.read()
        capture.release()
        if ok:
            frames.append(frame)
    if not frames:
        pytest.skip(f"dev clips not present: {CLIPS} (see ../shared/data/README.md)")
    return frames


def _network_inputs(
    networks: dict[str, TFLiteNet], frames_bgr: list[np.ndarray]
) -> dict[str, torch.Tensor]:
    """Real inputs for each network: letterboxed frames, face crops, both eyes' crops."""
    pipeline = TorchFaceMesh(networks, mesh_model="iris")
    detector, faces, eyes = [], [], []
    for bgr in frames_bgr:
        image = to_float_image(torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        height, width = image.shape[-2:]
        side = float(max(height, width))
        box = torch.tensor([[width / 2, height / 2, side, side, 0.0]])
        detector.append(crop_rois(image, box, 128, NETWORKS["face_detector"].input_range, True))
        pipeline.reset()
        rois, holds_face = pipeline.face_rois(image)
        assert bool(holds_face[0]), "the detector found no face in a test image"
        faces.append(crop_rois(image, rois[:1], 192, (0.0, 1.0), False))
        mesh, _ = pipeline.mesh(image, rois[:1])
        for corners, flip in ((RIGHT_EYE_CORNERS, False), (LEFT_EYE_CORNERS, True)):
            eye = rois_from_points(mesh[:, corners], 0, 1, 2.3)
            eyes.append(crop_rois(image, eye, 64, (0.0, 1.0), False, flip=flip))
    return {
        "face_detector": torch.cat(detector),
        "face_landmark": torch.cat(faces),
        "face_landmark_attention": torch.cat(faces),
        "iris_landmark": torch.cat(eyes),
    }


@pytest.fixture(scope="module", params=["images", "clips"])
def crops(request, networks, face_image, other_face) -> dict[str, torch.Tensor]:
    """Inputs from Grace Hopper and the astronaut, or from the dev clips' first frames."""
    frames = [face_image, other_face] if request.param == "images" else _clip_frames()
    return _network_inputs(networks, frames)


def _litert(name: str, batch: torch.Tensor) -> list[np.ndarray]:
    """LiteRT outputs for each image of an NCHW batch, stacked per output."""
    interpreter = Interpreter(model_path=str(model_path(name)), num_threads=1)
    interpreter.allocate_tensors()
    (source,) = interpreter.get_input_details()
    outputs: list[list[np.ndarray]] = [[] for _ in interpreter.get_output_details()]
    for image in batch:
        interpreter.set_tensor(source["index"], image.permute(1, 2, 0)[None].numpy().copy())
        interpreter.invoke()
        for i, detail in enumerate(interpreter.get_output_details()):
            outputs[i].append(interpreter.get_tensor(detail["index"]).reshape(-1))
    return [np.stack(o) for o in outputs]


def _torch(net: TFLiteNet, batch: torch.Tensor) -> list[np.ndarray]:
    with torch.inference_mode():
        return [o.reshape(len(batch), -1).numpy() for o in net(batch)]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x.astype(np.float64), -100, 100)))


def test_detector_matches_litert(networks, crops):
    batch = crops["face_detector"]
    (ref_boxes, ref_scores), (boxes, scores) = (
        _litert("face_detector", batch),
        _torch(networks["face_detector"], batch),
    )
    box_err = float(np.abs(boxes - ref_boxes).max())
    score_err = float(np.abs(_sigmoid(scores) - _sigmoid(ref_scores)).max())
    assert box_err <= 0.128, f"detector boxes/keypoints: max abs error {box_err:.2e} px of 128"
    assert score_err <= 1e-3, f"detector scores: max abs error {score_err:.2e}"
    assert _sigmoid(ref_scores).max(1).min() > 0.5, "every test image should hold a face"


def test_face_landmark_matches_litert(networks, crops):
    batch = crops["face_landmark"]
    (ref_points, ref_flag), (points, flag) = (
        _litert("face_landmark", batch),
        _torch(networks["face_landmark"], batch),
    )
    point_err = float(np.abs(points - ref_points).max())
    flag_err = float(np.abs(_sigmoid(flag) - _sigmoid(ref_flag)).max())
    assert point_err <= 0.192, f"face mesh: max abs error {point_err:.2e} px of 192"
    assert flag_err <= 1e-3, f"face flag: max abs error {flag_err:.2e}"
    assert _sigmoid(ref_flag).min() > 0.5, "every crop should be seen as a face"


def test_iris_landmark_matches_litert(networks, crops):
    batch = crops["iris_landmark"]
    (ref_contour, ref_iris), (contour, iris) = (
        _litert("iris_landmark", batch),
        _torch(networks["iris_landmark"], batch),
    )
    contour_err = float(np.abs(contour - ref_contour).max())
    iris_err = float(np.abs(iris - ref_iris).max())
    assert contour_err <= 0.064, f"eye contour: max abs error {contour_err:.2e} px of 64"
    assert iris_err <= 0.064, f"iris: max abs error {iris_err:.2e} px of 64"


def test_networks_take_batches(networks, crops):
    """Several faces (or both eyes) go through in one call, each as it would alone."""
    batch = crops["iris_landmark"][:2]
    together = _torch(networks["iris_landmark"], batch)
    alone = _torch(networks["iris_landmark"], batch[1:2])
    assert np.abs(together[0][1] - alone[0][0]).max() < 1e-4


def test_fp16_weights_are_dequantized():
    graph = read_tflite(model_path("face_landmark"))
    assert all(op.op_type != "DEQUANTIZE" for op in graph.operators)
    conv = next(op for op in graph.operators if op.op_type == "CONV_2D")
    weights = graph.constant(conv.inputs[1])
    assert weights.dtype == np.float32 and np.abs(weights).max() > 0


def test_unsupported_op_is_named_with_the_file(monkeypatch):
    """An op we do not translate (here: MUL, once we forget it) is named with the file."""
    monkeypatch.delitem(tflite_graph._OPTION_READERS, "MUL")
    with pytest.raises(TFLiteGraphError, match=r"face_landmark_with_attention\.tflite.*MUL"):
        read_tflite(model_path("face_landmark_attention"))


def test_custom_op_of_another_version_is_refused(monkeypatch):
    """Landmarks2TransformMatrix v1 computes another matrix: a file with a version we did
    not translate must fail, not run with the wrong maths."""
    monkeypatch.setitem(tflite_graph.CUSTOM_OPS, "CUSTOM (Landmarks2TransformMatrix)", 1)
    with pytest.raises(TFLiteGraphError, match=r"Landmarks2TransformMatrix.*version 2; only"):
        read_tflite(model_path("face_landmark_attention"))


def test_corrupted_files_give_clear_errors(tmp_path: Path):
    data = model_path("iris_landmark").read_bytes()
    not_tflite = tmp_path / "image.tflite"
    not_tflite.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(TFLiteGraphError, match="not a TFLite flatbuffer"):
        read_tflite(not_tflite)
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(TFLiteGraphError, match=r"truncated\.tflite"):
        read_tflite(truncated)
    with pytest.raises(TFLiteGraphError, match="cannot read"):
        read_tflite(tmp_path / "missing.tflite")
