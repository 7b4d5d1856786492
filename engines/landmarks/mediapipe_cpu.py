"""The CPU landmark backend (`tracking.type: mediapipe`): MediaPipe FaceMesh from mediapipe
0.10.14, fully offline (its models ship inside the package), in tracking mode with refined
eyes, lips and irises. It is asked for a few faces so that we, not the detector, choose whom
to follow: the face that continues the current track, else the largest, most central one.
"""

from __future__ import annotations

import os
import warnings

import cv2
import numpy as np

from engines.facegeom import N_LANDMARKS
from engines.landmarks.config import MediaPipeTrackingConfig
from engines.landmarks.interface import Landmarks, choose_face


def _quiet_mediapipe() -> None:
    """MediaPipe's C++ and TFLite logging: errors only (set before the graph starts)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype")


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
