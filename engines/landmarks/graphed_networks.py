"""The landmark networks replayed as CUDA graphs (`engines: cuda`).

Each face network is hundreds of small kernels. Launched one by one from Python, the
launches, not the GPU, set the pace (several microseconds each). Captured once into a CUDA
graph at the fixed batch a TensorRT engine would be built for (tensorrt.engine_batches),
a frame launches each network whole. Like an engine, the graph reads a static input buffer
and writes static outputs, so tensorrt.EngineModule does the padding, the copies and
the stream ordering for both. Off CUDA the runner runs the network eagerly on that buffer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

import torch

from engines.landmarks.nets import INPUT_NAME, MESH_MODEL_NETWORKS, TFLiteNet, load_networks
from engines.landmarks.tensorrt import EngineModule, engine_batches

log = logging.getLogger(__name__)

WARMUP_RUNS = 3  # eager runs before capture: lazy initialisation, cuDNN's algorithm choice
# One capture at a time in the process: remote peers build and first run their own
# networks on their own threads while the frame loop may be capturing too, and a capture
# must not see another thread's warm-up or capture (this guards the device, not our data).
_CAPTURE_LOCK = threading.Lock()


class GraphRunner:
    """A torch network behind the engine runner's interface (tensorrt.EngineRunner):
    a preallocated input buffer of `batch`; on CUDA the first run captures a graph that
    later runs replay, writing the same output tensors each time."""

    def __init__(self, net: TFLiteNet, batch: int, device: torch.device | str):
        self.net = net
        shape = (batch, *net.spec.input_shape[1:])
        self.inputs = {INPUT_NAME: torch.zeros(shape, device=device)}
        self.graph: torch.cuda.CUDAGraph | None = None
        self.replays = 0
        self._outputs: dict[str, torch.Tensor] = {}

    def run(
        self, inputs: Mapping[str, torch.Tensor], stream: torch.cuda.Stream | None
    ) -> dict[str, torch.Tensor]:
        (x,) = inputs.values()
        if x.data_ptr() != self.inputs[INPUT_NAME].data_ptr():
            raise ValueError(f"{self.net.spec.name}: run on the runner's own input buffer")
        if x.device.type != "cuda":
            return dict(zip(self.net.output_names, self.net(x), strict=True))
        if self.graph is None:
            self._capture(x)
        assert self.graph is not None and stream is not None
        with torch.cuda.stream(stream):
            self.graph.replay()
        self.replays += 1
        return self._outputs

    def _capture(self, x: torch.Tensor) -> None:
        """Warm up on a side stream, then capture on a stream of this runner's own (torch's
        default capture stream is one for the whole process)."""
        side = torch.cuda.Stream(x.device)
        with _CAPTURE_LOCK:
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self.net(x)
            torch.cuda.current_stream(x.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads' CUDA work (the web preview) must not void it
            with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                outputs = self.net(x)
        self._outputs = dict(zip(self.net.output_names, outputs, strict=True))
        self.graph = graph
        log.info("%s: captured as a CUDA graph (batch %d)", self.net.spec.name, x.shape[0])


def graphed_networks(
    max_faces: int,
    device: str = "cuda",
    mesh_model: str = "attention",
    networks: dict[str, TFLiteNet] | None = None,
) -> dict[str, EngineModule]:
    """`mesh_model`'s networks (loaded on `device` unless given), each behind a graph
    runner at its engine batch: the `networks` argument of TorchLandmarkDetector."""
    names = MESH_MODEL_NETWORKS[mesh_model]
    nets = networks if networks is not None else load_networks(device, names)
    batches = engine_batches(max_faces)
    return {
        name: EngineModule(
            name,
            GraphRunner(nets[name], batches[name], device),
            batches[name],
            torch.device(device),
        )
        for name in names
    }
