"""The landmark networks as TensorRT engines, standing in for the torch modules inside
TorchFaceMesh (`engines: tensorrt`): the same ONNX graphs onnxruntime checks, built once per
GPU and TensorRT version into the engine cache, run on the caller's CUDA stream.

Engines have fixed shapes (one optimisation profile, min = opt = max), so each network is
built for the largest batch the face mesh asks for and smaller batches are zero-padded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch

from engines.landmarks.nets import INPUT_NAME, MESH_MODEL_NETWORKS, NETWORKS

log = logging.getLogger(__name__)


class EngineRunner(Protocol):
    """What TrtNetwork offers: preallocated input buffers and an enqueue on a stream."""

    inputs: dict[str, torch.Tensor]

    def run(
        self, inputs: Mapping[str, torch.Tensor], stream: torch.cuda.Stream
    ) -> dict[str, torch.Tensor]: ...


def engine_batches(max_faces: int) -> dict[str, int]:
    """The batch each engine is built for: one detector image, a crop per face, two eyes
    per face."""
    return {
        "face_detector": 1,
        "face_landmark_attention": max_faces,
        "face_landmark": max_faces,
        "iris_landmark": 2 * max_faces,
    }


class EngineModule(torch.nn.Module):
    """One engine behind a torch module's call: (N, C, H, W) in, the network's outputs out
    (copies, since the engine reuses its buffers), for any N up to the engine's batch."""

    def __init__(self, name: str, runner: EngineRunner, batch: int, device: torch.device):
        super().__init__()
        self.name, self.batch, self._runner = name, batch, runner
        self.output_names = NETWORKS[name].output_names
        # TorchFaceMesh finds its device from a network's parameters
        self._device_anchor = torch.nn.Parameter(torch.empty(0, device=device), False)
        self._stream: torch.cuda.Stream | None = None  # the engine's own, made on first use

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        count = x.shape[0]
        if count > self.batch:
            raise ValueError(f"{self.name}: batch {count} > the engine's {self.batch}")
        buffer = self._runner.inputs[INPUT_NAME]
        buffer[:count].copy_(x)
        buffer[count:].zero_()
        if not x.is_cuda:
            outputs = self._runner.run({INPUT_NAME: buffer}, None)
            return tuple(outputs[n][:count].clone() for n in self.output_names)
        # The caller is usually on torch's legacy default stream, on which TensorRT's
        # enqueueV3 adds cudaStreamSynchronize calls of its own: run the engine on a stream
        # of its own, ordered after the input is written and before the outputs are read.
        caller = torch.cuda.current_stream(x.device)
        if self._stream is None:
            self._stream = torch.cuda.Stream(x.device)
        self._stream.wait_stream(caller)
        outputs = self._runner.run({INPUT_NAME: buffer}, self._stream)
        caller.wait_stream(self._stream)
        return tuple(outputs[n][:count].clone() for n in self.output_names)


def tensorrt_networks(
    cache_dir: Path,
    max_faces: int,
    device: str = "cuda",
    progress: bool = False,
    mesh_model: str = "attention",
) -> dict[str, EngineModule]:
    """Export the ONNX graphs of `mesh_model`'s networks into the cache, build (or reuse)
    an FP16 engine for each and load them: the `networks` argument of
    TorchLandmarkDetector."""
    # here, not at the top: the CUDA-graph path shares this module without onnx
    from engines.landmarks.onnx_export import export_onnx
    from engines.runtime.tensorrt_runtime import TrtNetwork, build_engine

    onnx_dir = Path(cache_dir) / "onnx"
    batches = engine_batches(max_faces)
    networks = {}
    names = MESH_MODEL_NETWORKS[mesh_model]
    for path in export_onnx(onnx_dir, progress=progress, names=names):
        name = path.stem
        shape = (batches[name], *NETWORKS[name].input_shape[1:])
        plan = build_engine(path, Path(cache_dir), input_shapes={INPUT_NAME: shape})
        log.info("%s: TensorRT engine %s (batch %d)", name, plan.name, batches[name])
        networks[name] = EngineModule(
            name, TrtNetwork(plan, device), batches[name], torch.device(device)
        )
    return networks
