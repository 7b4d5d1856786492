"""Picks the landmark backend for the chosen engines (engines.runtime.select)."""

from __future__ import annotations

from pathlib import Path

from engines.landmarks.config import MediaPipeTrackingConfig
from engines.landmarks.interface import LandmarkDetector


def build_landmarks(
    config: MediaPipeTrackingConfig, engine: str = "cpu", engine_cache: Path | None = None
) -> LandmarkDetector:
    """The tracker for `tracking.type` on the chosen engines (engines.runtime.select): MediaPipe on
    the CPU; on an NVIDIA GPU our torch port of the same networks replayed as CUDA graphs
    (cuda), or TensorRT engines built from their ONNX export into `engine_cache` (tensorrt)."""
    if engine == "cpu":
        from engines.landmarks.mediapipe_cpu import MediaPipeLandmarks

        backends = {"mediapipe": MediaPipeLandmarks}
        return backends[config.type](config)
    from engines.landmarks.torch_path import TorchLandmarkDetector

    if engine == "tensorrt":
        from engines.landmarks.tensorrt import tensorrt_networks
        from engines.runtime.tensorrt_runtime import engine_cache_dir

        cache = engine_cache if engine_cache is not None else engine_cache_dir(None)
        return TorchLandmarkDetector(config, "cuda", tensorrt_networks(cache, config.max_faces))
    from engines.landmarks.graphed_networks import graphed_networks

    return TorchLandmarkDetector(config, "cuda", graphed_networks(config.max_faces))
