"""The GPU engines' path (torch landmarks → motion → torch mesh generator) inside the
daemon's own Pipeline, against the CPU path on the same real driver frames: the head's
motion (both trackers run the same face model, see test_landmark_path), and each published
frame against the CPU generator rendering that same motion. Everywhere on torch's CPU device
(the same classes `engines: cuda` builds); where CUDA exists, also as `engines: cuda` itself
builds it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import mean_abs_diff

from daemon.config import Config
from daemon.frames import CapturedFrame
from daemon.pipeline import build_pipeline
from daemon.stats import RollingStats
from engines.generator.avatar_prep import prepare_avatar
from engines.generator.interface import letterbox
from engines.generator.mesh_cpu import MeshGenerator
from engines.generator.mesh_torch import TorchMeshGenerator
from engines.landmarks.torch_path import TorchLandmarkDetector

SIZE = (320, 240)
ROLLS_DEG = [0.0] * 6 + [4.0 * np.sin(i / 3) * (1 + i / 8) for i in range(18)]


def driver_frames(face: np.ndarray) -> list[np.ndarray]:
    """The astronaut tilting her head: the camera (never the avatar)."""
    base = letterbox(face, *SIZE)
    centre = (SIZE[0] / 2, SIZE[1] / 2)
    return [
        cv2.warpAffine(base, cv2.getRotationMatrix2D(centre, roll, 1.0), SIZE) for roll in ROLLS_DEG
    ]


def gpu_path_on_cpu(config: Config, stats: RollingStats):
    """What build_pipeline makes for engines: cuda, on torch's CPU device."""
    out = config.output
    generator = TorchMeshGenerator(
        config.generator, prepare_avatar(config.avatar.image), out.width, out.height, "cpu"
    )
    pipeline = build_pipeline(config, stats, generator)
    pipeline.set_detector(TorchLandmarkDetector(config.tracking, "cpu"))
    return pipeline


def gpu_path_on_cuda(config: Config, stats: RollingStats):
    return build_pipeline(config, stats, engine="cuda")


@pytest.fixture(
    scope="module",
    params=[
        gpu_path_on_cpu,
        pytest.param(
            gpu_path_on_cuda,
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ),
    ],
    ids=["torch-cpu", "cuda"],
)
def outputs(request, other_face):
    torch.set_num_threads(1)
    config = Config.model_validate({"output": {"width": SIZE[0], "height": SIZE[1]}})
    frames = driver_frames(other_face)
    results = {}
    for name, build in (("cpu", build_pipeline), ("gpu path", request.param)):
        stats = RollingStats()
        pipeline = build(config, stats)
        try:
            published = []
            for index, frame in enumerate(frames):
                t = index / 15
                image = pipeline.process(CapturedFrame(frame, t, index), t).copy()
                published.append((image, pipeline.motion))
        finally:
            pipeline.close()
        results[name] = published
    return config, frames, results


def test_the_gpu_path_follows_the_head_like_the_cpu_path(outputs):
    _, _, results = outputs
    cpu_rolls = np.array([motion.roll for _, motion in results["cpu"]])
    gpu_rolls = np.array([motion.roll for _, motion in results["gpu path"]])
    assert {motion.state for _, motion in results["gpu path"]} == {"tracked"}
    assert np.ptp(gpu_rolls) > 8, gpu_rolls  # it really moved
    apart = np.abs(cpu_rolls - gpu_rolls)
    # the same face model on both paths (the attention mesh): measured up to 0.04° apart
    assert apart.max() < 0.2, f"roll apart by up to {apart.max():.2f}° ({apart.mean():.2f}° mean)"


def test_the_gpu_path_publishes_what_the_cpu_generator_renders(outputs):
    config, frames, results = outputs
    out = config.output
    cpu = MeshGenerator(config.generator, prepare_avatar("default"), out.width, out.height)
    for index, (published, motion) in enumerate(results["gpu path"]):
        assert published.shape == (out.height, out.width, 3) and published.dtype == np.uint8
        difference = mean_abs_diff(published, cpu.render(motion))
        assert difference < 0.5, f"frame {index}: {difference:.2f} levels from the CPU generator"
        assert mean_abs_diff(published, frames[index]) > 30, f"frame {index} is the camera frame"
