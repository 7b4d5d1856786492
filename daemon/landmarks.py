"""Landmark stage: 478 3D face landmarks per driver frame.

The CPU backend (`type: mediapipe`) is MediaPipe FaceMesh from mediapipe 0.10.14, fully
offline (its models ship inside the package), in tracking mode with refined eyes, lips and
irises. It is asked for a few faces so that we, not the detector, choose whom to follow:
the face that continues the current track, else the largest, most central one.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from daemon.config import MediaPipeTrackingConfig
from daemon.facegeom import N_LANDMARKS

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Landmarks:
    """One face: (478, 3) float32 pixel-scaled points (x·w, y·h, z·w) of a w × h frame."""

    points: np.ndarray
    width: int
    height: int
    t_capture: float
    index: int
    faces_seen: int = 1

    @property
    def center(self) -> np.ndarray:
        return self.points[:, :2].mean(0)

    @property
    def size(self) -> float:
        """Bounding-box diagonal, pixels."""
        span = self.points[:, :2].max(0) - self.points[:, :2].min(0)
        return float(np.hypot(*span))


class LandmarkDetector(Protocol):
    """Finds the followed face in a BGR frame, or None when there is none."""

    def detect(self, image: np.ndarray, t_capture: float, index: int) -> Landmarks | None: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


def _quiet_mediapipe() -> None:
    """MediaPipe's C++ and TFLite logging: errors only (set before the graph starts)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype")


def choose_face(
    faces: list[np.ndarray], previous: Landmarks | None, width: int, height: int
) -> int:
    """Index of the face to follow: the one continuing `previous` (its centre within half a
    face size of the old one), else the largest and most central."""
    centers = [f[:, :2].mean(0) for f in faces]
    sizes = [float(np.hypot(*(f[:, :2].max(0) - f[:, :2].min(0)))) for f in faces]
    if previous is not None:
        distances = [float(np.linalg.norm(c - previous.center)) for c in centers]
        best = int(np.argmin(distances))
        if distances[best] < 0.5 * previous.size:
            return best
    frame_center = np.array([width / 2, height / 2])
    diagonal = float(np.hypot(width, height))
    scores = [
        s * (1.0 - np.linalg.norm(c - frame_center) / diagonal)
        for s, c in zip(sizes, centers, strict=True)
    ]
    return int(np.argmax(scores))


class MediaPipeLandmarks:
    """MediaPipe FaceMesh (refined: 478 points) in tracking mode, re-detecting periodically
    so a lost or drifted track recovers."""

    MAX_WIDTH = 640  # larger frames are scaled down first; points come back at full size

    def __init__(self, config: MediaPipeTrackingConfig, static_images: bool = False):
        _quiet_mediapipe()
        import mediapipe as mp

        self.config = config
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static_images,
            max_num_faces=config.max_faces,
            refine_landmarks=True,
            min_detection_confidence=config.min_detection_confidence,
            min_tracking_confidence=config.min_tracking_confidence,
        )
        self._previous: Landmarks | None = None
        self._last_detection: float | None = None

    def detect(self, image: np.ndarray, t_capture: float, index: int) -> Landmarks | None:
        redetect_s = self.config.redetect_s  # on the frames' clock: renders are repeatable
        if self._last_detection is None or t_capture < self._last_detection:
            self._last_detection = t_capture
        elif redetect_s and t_capture - self._last_detection > redetect_s:
            self.reset()
            self._last_detection = t_capture
        height, width = image.shape[:2]
        if width > self.MAX_WIDTH:  # the models see 192-256 px crops: a smaller frame costs
            # nothing in precision and saves the colour conversion and the graph's resizes
            image = cv2.resize(
                image,
                (self.MAX_WIDTH, round(height * self.MAX_WIDTH / width)),
                interpolation=cv2.INTER_AREA,
            )
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        rgb.flags.writeable = False
        result = self._mesh.process(rgb)
        faces = result.multi_face_landmarks or []
        if not faces:
            self._previous = None
            return None
        scale = np.array([width, height, width], np.float32)
        arrays = [
            np.array([(p.x, p.y, p.z) for p in face.landmark], np.float32) * scale for face in faces
        ]
        arrays = [a for a in arrays if len(a) == N_LANDMARKS]
        if not arrays:
            return None
        chosen = choose_face(arrays, self._previous, width, height)
        landmarks = Landmarks(arrays[chosen], width, height, t_capture, index, len(arrays))
        self._previous = landmarks
        return landmarks

    def reset(self) -> None:
        """Forget the track: the next frame runs the face detector again."""
        self._mesh.reset()

    def close(self) -> None:
        self._mesh.close()


def build_landmarks(
    config: MediaPipeTrackingConfig, engine: str = "cpu", engine_cache: Path | None = None
) -> LandmarkDetector:
    """The tracker for `tracking.type` on the chosen engines (engines.select): MediaPipe on
    the CPU; on an NVIDIA GPU our torch port of the same networks replayed as CUDA graphs
    (cuda), or TensorRT engines built from their ONNX export into `engine_cache` (tensorrt)."""
    if engine == "cpu":
        backends = {"mediapipe": MediaPipeLandmarks}
        return backends[config.type](config)
    from engines.landmark_path import TorchLandmarkDetector

    if engine == "tensorrt":
        from engines.tensorrt_runtime import engine_cache_dir
        from engines.trt_landmarks import tensorrt_networks

        cache = engine_cache if engine_cache is not None else engine_cache_dir(None)
        return TorchLandmarkDetector(config, "cuda", tensorrt_networks(cache, config.max_faces))
    from engines.graphed_networks import graphed_networks

    return TorchLandmarkDetector(config, "cuda", graphed_networks(config.max_faces))
