"""engines.landmarks.graphed_networks: the landmark networks behind fixed-batch graph runners
(`engines: cuda`). Here on the CPU the runners run eagerly on their static buffers, which
checks the padding and slicing around them; on CUDA the graphs themselves are checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from daemon.config import MediaPipeTrackingConfig
from engines.landmarks.graphed_networks import GraphRunner, graphed_networks
from engines.landmarks.nets import INPUT_NAME, MESH_MODEL_NETWORKS, example_input, load_networks
from engines.landmarks.tensorrt import engine_batches
from engines.landmarks.torch_path import TorchLandmarkDetector

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def networks():
    torch.set_num_threads(1)
    return load_networks()


def _same_landmarks(plain, other, image, frames: int = 3) -> float:
    """The largest point difference over a detection frame and tracking frames."""
    worst = 0.0
    for index in range(frames):
        want = plain.detect(image, index / 30, index)
        got = other.detect(image, index / 30, index)
        assert want is not None and got is not None
        worst = max(worst, float(np.abs(got.points - want.points).max()))
    return worst


@pytest.mark.parametrize("mesh_model", ["attention", "iris"])
def test_graphed_networks_give_the_plain_landmarks(networks, face_image, mesh_model):
    """Two faces' batch, one face present: the padded row must not leak into the result."""
    config = MediaPipeTrackingConfig(max_faces=2)
    plain = TorchLandmarkDetector(config, networks=networks, mesh_model=mesh_model)
    graphed = graphed_networks(2, "cpu", mesh_model, networks)
    assert {name: m.batch for name, m in graphed.items()} == {
        name: engine_batches(2)[name] for name in MESH_MODEL_NETWORKS[mesh_model]
    }
    wrapped = TorchLandmarkDetector(config, networks=graphed, mesh_model=mesh_model)
    worst = _same_landmarks(plain, wrapped, face_image)
    # batched convolutions round differently from single ones, and tracking carries it on
    assert worst < 0.05, f"graphed networks differ by {worst:.2e} px"


def test_a_runner_runs_only_on_its_own_buffer(networks):
    runner = GraphRunner(networks["face_detector"], 1, "cpu")
    with pytest.raises(ValueError, match="face_detector: run on the runner's own input"):
        runner.run({INPUT_NAME: example_input("face_detector")}, None)
    buffer = runner.inputs[INPUT_NAME]
    buffer.copy_(example_input("face_detector"))
    with torch.inference_mode():
        got = runner.run({INPUT_NAME: buffer}, None)
        want = networks["face_detector"](buffer)
    assert list(got) == ["regressors", "classificators"]
    assert all(torch.equal(g, w) for g, w in zip(got.values(), want, strict=True))


@cuda_only
def test_cuda_graph_is_captured_once_and_replays_the_network():
    nets = load_networks("cuda", ["face_detector", "face_landmark_attention"])
    modules = graphed_networks(2, "cuda", "attention", nets)
    module = modules["face_landmark_attention"]
    for seed in range(3):
        x = example_input("face_landmark_attention", batch=2, seed=seed).cuda()
        with torch.inference_mode():
            got = module(x)
            want = nets["face_landmark_attention"](x)
        for g, w in zip(got, want, strict=True):
            scale = float(w.abs().max())
            assert float((g - w).abs().max()) <= 1e-4 * scale
    runner = module._runner
    graph, replays = runner.graph, runner.replays
    assert graph is not None and replays == 3
    one = example_input("face_landmark_attention", batch=1, seed=5).cuda()
    with torch.inference_mode():
        got = module(one)  # a batch of 1 in the graph of 2: padded, then sliced
        want = nets["face_landmark_attention"](one)
    assert runner.graph is graph and runner.replays == 4  # replayed, not captured again
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert float((g - w).abs().max()) <= 1e-4 * float(w.abs().max())


@cuda_only
def test_cuda_detector_on_graphs_gives_the_eager_landmarks(face_image):
    config = MediaPipeTrackingConfig(max_faces=2)
    nets = load_networks("cuda", ["face_detector", "face_landmark_attention"])
    plain = TorchLandmarkDetector(config, networks=nets)
    graphed = TorchLandmarkDetector(config, networks=graphed_networks(2, "cuda", networks=nets))
    worst = _same_landmarks(plain, graphed, face_image, frames=5)
    assert worst < 0.05, f"CUDA graphs differ from eager CUDA by {worst:.2e} px"
