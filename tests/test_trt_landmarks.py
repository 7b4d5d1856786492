"""engines.landmarks.tensorrt: TensorRT engines standing in for the torch networks inside the
face mesh. TensorRT cannot be installed here, so the engine itself is the one stand-in: a
runner with the engine's fixed-batch input buffer that runs the same network in torch
(the ONNX graphs TensorRT would build from are checked against torch in test_onnx_export)."""

from collections.abc import Mapping

import numpy as np
import pytest
import torch

from daemon.config import MediaPipeTrackingConfig
from engines.landmarks.nets import INPUT_NAME, NETWORKS, load_networks
from engines.landmarks.tensorrt import EngineModule, engine_batches
from engines.landmarks.torch_path import TorchLandmarkDetector


class FixedBatchRunner:
    """The engine's side: a preallocated input buffer of the built batch, outputs of that
    batch written into buffers it reuses (as TrtNetwork does)."""

    def __init__(self, net: torch.nn.Module, batch: int, shape: tuple[int, ...]):
        self.net, self.batch = net, batch
        self.inputs = {INPUT_NAME: torch.full((batch, *shape[1:]), float("nan"))}
        self.outputs: dict[str, torch.Tensor] = {}
        self.batches_seen: list[int] = []

    def run(self, inputs: Mapping[str, torch.Tensor], stream) -> dict[str, torch.Tensor]:
        (x,) = inputs.values()
        self.batches_seen.append(x.shape[0])
        with torch.no_grad():
            outs = self.net(x)
        for name, out in zip(self.net.output_names, outs, strict=True):
            self.outputs.setdefault(name, torch.empty_like(out)).copy_(out)
        return self.outputs


@pytest.fixture(scope="module")
def networks():
    torch.set_num_threads(1)
    return load_networks()


def engine_modules(networks, max_faces: int) -> dict[str, EngineModule]:
    batches = engine_batches(max_faces)
    return {
        name: EngineModule(
            name,
            FixedBatchRunner(networks[name], batches[name], NETWORKS[name].input_shape),
            batches[name],
            torch.device("cpu"),
        )
        for name in NETWORKS
    }


def test_engine_batches_cover_every_face_and_eye():
    assert engine_batches(3) == {
        "face_detector": 1,
        "face_landmark_attention": 3,
        "face_landmark": 3,
        "iris_landmark": 6,
    }


def test_smaller_batches_are_padded_and_sliced_back(networks):
    module = engine_modules(networks, max_faces=3)["iris_landmark"]
    x = torch.rand(2, *NETWORKS["iris_landmark"].input_shape[1:])
    got = module(x)
    with torch.no_grad():
        want = networks["iris_landmark"](x)
    assert module._runner.batches_seen == [6]
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert torch.allclose(g, w, atol=1e-5), float((g - w).abs().max())


def test_outputs_are_copies_the_next_run_cannot_overwrite(networks):
    module = engine_modules(networks, max_faces=1)["face_landmark"]
    shape = NETWORKS["face_landmark"].input_shape
    first = module(torch.rand(*shape))[0]
    kept = first.clone()
    module(torch.rand(*shape))
    assert torch.equal(first, kept)


def test_a_batch_beyond_the_engine_is_refused(networks):
    module = engine_modules(networks, max_faces=1)["face_landmark"]
    with pytest.raises(ValueError, match="face_landmark: batch 2 > the engine's 1"):
        module(torch.rand(2, *NETWORKS["face_landmark"].input_shape[1:]))


@pytest.mark.parametrize("mesh_model", ["attention", "iris"])
def test_landmarks_through_engines_equal_the_torch_path(networks, face_image, mesh_model):
    config = MediaPipeTrackingConfig(max_faces=2)
    plain = TorchLandmarkDetector(config, networks=networks, mesh_model=mesh_model)
    engines = TorchLandmarkDetector(
        config, networks=engine_modules(networks, 2), mesh_model=mesh_model
    )
    for index in range(3):  # detection, then tracking from the previous landmarks
        want = plain.detect(face_image, index / 30, index)
        got = engines.detect(face_image, index / 30, index)
        assert want is not None and got is not None
        error = float(np.abs(got.points - want.points).max())
        # batched convolutions round differently from single ones, and tracking carries it on
        assert error < 0.05, f"frame {index}: engine path differs by {error:.2e} px"
