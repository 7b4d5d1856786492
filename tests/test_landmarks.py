"""Landmark stage on real faces: count, placement, face selection, offline models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from daemon.config import MediaPipeTrackingConfig
from engines.facegeom import (
    CHIN,
    LEFT_EYE_INNER,
    LEFT_EYE_OUTER,
    LEFT_IRIS,
    LOWER_LIP_INNER,
    N_LANDMARKS,
    RIGHT_EYE_INNER,
    RIGHT_EYE_OUTER,
    RIGHT_IRIS,
    UPPER_LIP_INNER,
)
from engines.landmarks.interface import Landmarks, choose_face
from engines.landmarks.mediapipe_cpu import MediaPipeLandmarks

NOSE_TIP = 1


@pytest.fixture(scope="module")
def detector():
    mesh = MediaPipeLandmarks(MediaPipeTrackingConfig(), static_images=True)
    yield mesh
    mesh.close()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)


def assert_face_layout(points: np.ndarray, width: int, height: int) -> None:
    assert points.shape == (N_LANDMARKS, 3) and points.dtype == np.float32
    assert (points[:, 0] >= 0).all() and (points[:, 0] < width).all()
    assert (points[:, 1] >= 0).all() and (points[:, 1] < height).all()
    eyes_y = points[[RIGHT_EYE_OUTER, LEFT_EYE_OUTER], 1].mean()
    # top to bottom: eyes, nose tip, lips, chin
    assert eyes_y < points[NOSE_TIP, 1] < points[UPPER_LIP_INNER, 1]
    assert points[UPPER_LIP_INNER, 1] <= points[LOWER_LIP_INNER, 1] + 1 < points[CHIN, 1]
    # the subject's right eye is on the image's left; each iris sits between its corners
    assert points[RIGHT_EYE_OUTER, 0] < points[RIGHT_IRIS, 0] < points[RIGHT_EYE_INNER, 0]
    assert points[LEFT_EYE_INNER, 0] < points[LEFT_IRIS, 0] < points[LEFT_EYE_OUTER, 0]
    assert points[RIGHT_EYE_INNER, 0] < points[NOSE_TIP, 0] < points[LEFT_EYE_INNER, 0]


def test_grace_hopper_has_478_landmarks_in_place(detector, face_image):
    found = detector.detect(face_image, 0.0, 0)
    assert found is not None
    height, width = face_image.shape[:2]
    assert_face_layout(found.points, width, height)
    # her face is in the upper middle of the portrait (512x600): eyes near x 190..330, y ~ 200
    assert 150 < found.points[RIGHT_EYE_OUTER, 0] < 230 < 270 < found.points[LEFT_EYE_OUTER, 0]
    assert 150 < found.points[[RIGHT_EYE_OUTER, LEFT_EYE_OUTER], 1].mean() < 260


def test_astronaut_has_478_landmarks_in_place(detector, astronaut):
    found = detector.detect(astronaut, 0.0, 0)
    assert found is not None
    assert_face_layout(found.points, 512, 512)
    assert 150 < found.points[NOSE_TIP, 0] < 260 and 60 < found.points[NOSE_TIP, 1] < 160


def test_no_face_is_none(detector):
    noise = np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8)
    assert detector.detect(noise, 0.0, 0) is None


def test_points_are_pixel_scaled_with_z_scaled_by_width(detector, face_image):
    small = cv2.resize(face_image, (256, 300))
    full = detector.detect(face_image, 0.0, 0).points
    half = detector.detect(small, 0.0, 1).points
    assert np.allclose(half[:, :2] * 2, full[:, :2], atol=4)
    assert np.allclose(half[:, 2] * 2, full[:, 2], atol=6)


def face_crop(image: np.ndarray, height: int) -> np.ndarray:
    """The face with some margin, scaled to `height` pixels."""
    found = MediaPipeLandmarks(MediaPipeTrackingConfig(), static_images=True)
    try:
        points = found.detect(image, 0.0, 0).points
    finally:
        found.close()
    (x0, y0), (x1, y1) = points[:, :2].min(0), points[:, :2].max(0)
    pad = 0.6 * (y1 - y0)
    top, bottom = max(0, int(y0 - pad)), min(image.shape[0], int(y1 + pad / 2))
    left, right = max(0, int(x0 - pad / 2)), min(image.shape[1], int(x1 + pad / 2))
    crop = image[top:bottom, left:right]
    return cv2.resize(crop, (round(crop.shape[1] * height / crop.shape[0]), height))


def scene(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    canvas = np.full((480, 960, 3), 90, np.uint8)
    canvas[: left.shape[0], : left.shape[1]] = left
    canvas[: right.shape[0], 960 - right.shape[1] :] = right
    return canvas


def test_follows_the_largest_face_and_does_not_jump(face_image, astronaut):
    mesh = MediaPipeLandmarks(MediaPipeTrackingConfig(max_faces=3))
    try:
        first = mesh.detect(scene(face_crop(face_image, 420), face_crop(astronaut, 260)), 0.0, 0)
        assert first is not None and first.faces_seen == 2
        assert first.center[0] < 480  # the larger face: Grace Hopper, on the left
        # now the other face is the larger one: we keep following ours
        swapped = scene(face_crop(face_image, 260), face_crop(astronaut, 460))
        for index in range(1, 4):
            again = mesh.detect(swapped, index / 30, index)
            assert again is not None and again.faces_seen == 2
            assert again.center[0] < 480
    finally:
        mesh.close()


def fake_face(center: tuple[float, float], size: float) -> np.ndarray:
    ring = np.linspace(0, 2 * np.pi, N_LANDMARKS, endpoint=False)
    pts = np.stack([np.cos(ring), np.sin(ring), np.zeros_like(ring)], axis=1) * size / 2.83
    return (pts + np.array([*center, 0.0])).astype(np.float32)


def test_choose_face_rules():
    left_small = fake_face((200, 300), 100)
    center_big = fake_face((640, 360), 300)
    corner_bigger = fake_face((1150, 80), 320)
    # no track yet: large and central beats larger in the corner
    assert choose_face([left_small, corner_bigger, center_big], None, 1280, 720) == 2
    # a track continues with the face nearest to it, whatever its size
    track = Landmarks(left_small, 1280, 720, 0.0, 0)
    moved = fake_face((215, 305), 104)
    assert choose_face([center_big, moved], track, 1280, 720) == 1
    # the tracked face left: fall back to the best remaining one
    assert choose_face([corner_bigger, center_big], track, 1280, 720) == 1


def test_models_ship_inside_the_installed_package():
    from pathlib import Path

    import mediapipe

    modules = Path(mediapipe.__path__[0]) / "modules"
    for model in (
        "face_detection/face_detection_short_range.tflite",
        "face_landmark/face_landmark_with_attention.tflite",
    ):
        assert (modules / model).stat().st_size > 100_000
