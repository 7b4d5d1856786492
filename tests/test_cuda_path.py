"""The landmark networks and the landmark path on a real CUDA device, against the same
code on the CPU and against MediaPipe's FaceMesh (skipped where torch sees no CUDA device;
`make gpu-check` runs them on a GPU machine)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from daemon.config import MediaPipeTrackingConfig, MeshGeneratorConfig
from engines.generator.avatar_prep import prepare_avatar
from engines.generator.mesh_torch import TorchMeshGenerator
from engines.landmarks.graphed_networks import graphed_networks
from engines.landmarks.mediapipe_cpu import MediaPipeLandmarks
from engines.landmarks.nets import NETWORKS, TFLiteNet, example_input, load_networks
from engines.landmarks.torch_path import (
    TorchFaceMesh,
    TorchLandmarkDetector,
    crop_rois,
    exact_fp32_convolutions,
    to_float_image,
)
from engines.motion.estimator import Motion

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

RELATIVE_TOLERANCE = 1e-4  # of each output's largest magnitude: fp32 on both sides
BACKEND_MAX_PX = 0.25  # as tests/test_landmark_path.py holds the CPU device to
CLIP_FRAMES = 30


@pytest.fixture(scope="module")
def networks() -> Iterator[dict[str, dict[str, TFLiteNet]]]:
    """Both devices' networks, convolutions in full fp32 on CUDA (as the daemon runs them)."""
    torch.set_num_threads(1)
    allow_tf32 = torch.backends.cudnn.allow_tf32
    exact_fp32_convolutions()
    yield {"cpu": load_networks("cpu"), "cuda": load_networks("cuda")}
    torch.backends.cudnn.allow_tf32 = allow_tf32


def _face_crops(cpu_networks: dict[str, TFLiteNet], images: list[np.ndarray]) -> torch.Tensor:
    """192 px face crops of real faces, as the landmark path cuts them."""
    pipeline = TorchFaceMesh(cpu_networks)
    crops = []
    for bgr in images:
        image = to_float_image(torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        pipeline.reset()
        rois, holds_face = pipeline.face_rois(image)
        assert bool(holds_face[0]), "no face found in a test image"
        crops.append(crop_rois(image, rois[:1], 192, (0.0, 1.0), False))
    return torch.cat(crops)


def _assert_close(name: str, want: tuple[torch.Tensor, ...], got: tuple[torch.Tensor, ...]):
    for output, w, g in zip(NETWORKS[name].output_names, want, got, strict=True):
        assert g.is_cuda and g.shape == w.shape, f"{name}.{output}"
        error = float((g.cpu() - w).abs().max())
        scale = float(w.abs().max())
        assert error <= RELATIVE_TOLERANCE * scale, (
            f"{name}.{output}: cuda vs cpu max abs diff {error:.3g} for outputs up to {scale:.3g}"
        )


@pytest.mark.parametrize("name", list(NETWORKS))
def test_each_network_on_cuda_matches_the_cpu(networks, name):
    inputs = example_input(name, batch=3, seed=11)
    with torch.inference_mode():
        want = networks["cpu"][name](inputs)
        got = networks["cuda"][name](inputs.cuda())
    _assert_close(name, want, got)


@pytest.mark.parametrize("name", ["face_landmark", "face_landmark_attention"])
def test_face_models_on_cuda_match_the_cpu_on_real_faces(networks, name, face_image, other_face):
    """Real faces: the attention mesh's patches then sit where a face's lips and eyes are."""
    crops = _face_crops(networks["cpu"], [face_image, other_face])
    with torch.inference_mode():
        want = networks["cpu"][name](crops)
        got = networks["cuda"][name](crops.cuda())
    _assert_close(name, want, got)


def _frames() -> list[tuple[str, list[np.ndarray]]]:
    clips = []
    for path in sorted((SHARED_DATA / "driving").glob("*.mp4")):
        capture = cv2.VideoCapture(str(path))
        frames = []
        while len(frames) < CLIP_FRAMES:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
        capture.release()
        clips.append((path.name, frames))
    return clips


def test_landmark_path_on_cuda_matches_mediapipe(networks, face_image, other_face):
    """The daemon's tracker on CUDA against the CPU backend: the images, and the dev clips
    where they are present."""
    config = MediaPipeTrackingConfig()
    runs = [("grace_hopper", [face_image], True), ("astronaut", [other_face], True)]
    runs += [(name, frames, False) for name, frames in _frames()]
    report = []
    for name, frames, static in runs:
        backend = MediaPipeLandmarks(config, static_images=static)
        ours = TorchLandmarkDetector(config, networks=networks["cuda"])
        assert ours.device.type == "cuda"
        distances = []
        try:
            for index, bgr in enumerate(frames):
                want, got = (
                    backend.detect(bgr, index / 30, index),
                    ours.detect(bgr, index / 30, index),
                )
                assert (want is None) == (got is None), f"{name} frame {index}: one found a face"
                if want is not None:
                    distances.append(
                        np.linalg.norm(got.points[:, :2] - want.points[:, :2], axis=1).mean()
                    )
        finally:
            backend.close()
            ours.close()
        assert distances, f"{name}: no face"
        report.append(f"{name} {np.mean(distances):.3f} px")
    means = [float(entry.rsplit(" ", 2)[1]) for entry in report]
    assert max(means) <= BACKEND_MAX_PX, "; ".join(report)


def test_cuda_tracker_turns_tf32_off(networks):
    """Ampere and later run fp32 convolutions as TF32 unless told not to."""
    torch.backends.cudnn.allow_tf32 = True  # torch's default
    TorchLandmarkDetector(MediaPipeTrackingConfig(), networks=networks["cuda"])
    assert not torch.backends.cudnn.allow_tf32


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """Any synchronising CUDA call inside raises (torch's sync debug mode)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("max_faces", [1, 3])
def test_a_frame_runs_without_a_host_sync_until_its_readback(networks, other_face, max_faces):
    """The daemon's `engines: cuda` tracker, upload to packed result, waits for the GPU
    only for the readback: with max_faces 1 a tracking frame; with 3 (the default) and one
    face in view, every frame also runs the detector, as MediaPipe does."""
    config = MediaPipeTrackingConfig(max_faces=max_faces)
    detector = TorchLandmarkDetector(config, networks=graphed_networks(max_faces))
    for index in range(2):  # first use: graph captures, the letterbox's upload
        assert detector.detect(other_face, index / 30, index) is not None
    with no_host_sync():
        packed = detector.frame_on_device(other_face)
    assert packed.shape == (max_faces, 478 * 3 + 1)
    scores = packed[:, -1].cpu()
    assert float(scores[0]) > 0.5 and (scores[1:] < 0.5).all()


def test_the_generator_renders_without_a_host_sync():
    generator = TorchMeshGenerator(
        MeshGeneratorConfig(), prepare_avatar("default"), 1280, 720, device="cuda"
    )
    generator.render_tensor(Motion())  # first use: lazy allocations
    with no_host_sync():
        frame = generator.render_tensor(Motion(yaw=12.0, mouth_open=0.4, gaze=(0.3, 0.0)))
    assert frame.is_cuda and frame.shape == (720, 1280, 3)
