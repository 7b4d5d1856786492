"""The GPU engines' path (torch landmarks → motion → torch mesh generator) inside the
daemon's own Pipeline, against the CPU path on the same real driver frames: the head's
motion (both trackers run the same face model, see test_landmark_path), and each published
frame against the CPU generator rendering that same motion; and inside the daemon's
FrameLoop, which streams it (daemon.device_loop): frame for frame what the Pipeline makes,
two steps late. Everywhere on torch's CPU device (the same classes `engines: cuda` builds);
where CUDA exists, also as `engines: cuda` itself builds it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import mean_abs_diff

from daemon.config import Config
from daemon.frames import CapturedFrame
from daemon.pipeline import FrameLoop, build_pipeline
from daemon.sinks import SinkSet
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


GPU_PATHS = [
    pytest.param(gpu_path_on_cpu, id="torch-cpu"),
    pytest.param(
        gpu_path_on_cuda,
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        id="cuda",
    ),
]


@pytest.fixture(scope="module", params=GPU_PATHS)
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


class Replay:
    """The camera: the given frames, one per `latest`."""

    def __init__(self, frames: list[CapturedFrame]):
        self.frames = iter(frames)

    def latest(self) -> CapturedFrame | None:
        return next(self.frames)


@pytest.mark.parametrize("build", GPU_PATHS)
def test_the_frame_loop_streams_the_gpu_path_frame_for_frame(build, other_face):
    """FrameLoop on the GPU engines publishes, two steps late and each with its own driver
    frame's t_capture, exactly what the Pipeline makes of those frames one by one."""
    torch.set_num_threads(1)
    config = Config.model_validate({"output": {"width": SIZE[0], "height": SIZE[1]}})
    camera = [
        CapturedFrame(frame, 100 + index / 15, index)
        for index, frame in enumerate(driver_frames(other_face)[5:15])  # the head rolling
    ]
    reference = build(config, RollingStats())
    try:
        expected = [reference.process(frame, frame.t_capture).copy() for frame in camera]
    finally:
        reference.close()
    stats = RollingStats()
    pipeline = build(config, stats)
    now = [0.0]
    loop = FrameLoop(Replay(camera), pipeline, SinkSet(stats), 15, stats, clock=lambda: now[0])
    try:
        assert pipeline.device is not None  # the device path: the tracker's device
        assert torch.device(pipeline.device).type == pipeline.generator.device.type
        published = []
        for frame in camera:
            now[0] = frame.t_capture
            published.append(loop.step())
        flushed = loop.finish()
    finally:
        pipeline.close()
    assert published[:2] == [None, None] and len(flushed) == 2
    frames = [f for f in published if f is not None] + flushed
    assert [f.index for f in frames] == list(range(len(camera)))
    exact = pipeline.generator.device.type == "cpu"
    for frame, driver, want in zip(frames, camera, expected, strict=True):
        assert frame.t_capture == driver.t_capture
        if exact:
            np.testing.assert_array_equal(frame.image, want)
        else:
            assert mean_abs_diff(frame.image, want) < 0.5
        assert mean_abs_diff(frame.image, driver.image) > 30, "a camera frame was published"
    assert len({f.image.tobytes() for f in frames}) == len(frames), "frames repeat"
    assert {"upload", "readback"} <= set(stats.summary())
