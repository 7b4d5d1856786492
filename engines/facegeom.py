"""Face geometry on MediaPipe's 478 landmarks: rigid fit, head angles, and the measured
signals (eye openness, gaze, mouth). Shared by the motion stage and the evaluation harness,
so both measure a face the same way.

Points are pixel-scaled 3D: (x·w, y·h, z·w), x right, y down, z away from the camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_LANDMARKS = 478

# Stable points for the rigid fit: forehead, nose bridge, eye corners, cheekbones, temples.
# No lips, jaw, eyelids or brows: they move with expression.
RIGID = np.array([
    10, 151, 9, 8,  # forehead, midline
    168, 6, 197, 195,  # nose bridge
    33, 133, 362, 263,  # eye corners (outer right, inner right, inner left, outer left)
    130, 359,  # outer canthi, lateral
    234, 454, 93, 323,  # cheek contour at ear level
    116, 345, 50, 280,  # cheekbones
    127, 356,  # temples
])  # fmt: skip

RIGHT_EYE_OUTER, RIGHT_EYE_INNER, LEFT_EYE_INNER, LEFT_EYE_OUTER = 33, 133, 362, 263
RIGHT_UPPER_LID, RIGHT_LOWER_LID, LEFT_UPPER_LID, LEFT_LOWER_LID = 159, 145, 386, 374
UPPER_LIP_INNER, LOWER_LIP_INNER, MOUTH_RIGHT, MOUTH_LEFT = 13, 14, 61, 291
RIGHT_IRIS, LEFT_IRIS = 468, 473
RIGHT_CHEEK, LEFT_CHEEK, FOREHEAD, CHIN = 234, 454, 10, 152


@dataclass(frozen=True, slots=True)
class Similarity:
    """dst ≈ scale · R · src + t (row vectors: dst = scale · src @ R.T + t)."""

    scale: float
    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.scale * points @ self.rotation.T + self.translation

    def invert(self, points: np.ndarray) -> np.ndarray:
        """Undo the fit: current points back into the reference's frame (pose-normalised)."""
        return (points - self.translation) @ self.rotation / self.scale


def umeyama(src: np.ndarray, dst: np.ndarray) -> Similarity:
    """Least-squares similarity src → dst (Umeyama 1991), never a reflection."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    var_s = (a**2).sum() / len(src)
    scale = float((d * sign).sum() / var_s) if var_s > 0 else 1.0
    return Similarity(scale, rotation, mu_d - scale * rotation @ mu_s)


def fit_pose(reference: np.ndarray, current: np.ndarray) -> Similarity:
    """The rigid-subset fit reference → current (both 478 × 3)."""
    return umeyama(reference[RIGID], current[RIGID])


def rotation_to_angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees for R = Ry(yaw) · Rx(pitch) · Rz(roll).

    yaw turns about the vertical axis, pitch nods about the horizontal one, roll tilts in the
    image plane (positive: clockwise as seen in the image, since y points down).
    """
    r = rotation
    pitch = np.arcsin(np.clip(-r[1, 2], -1.0, 1.0))
    yaw = np.arctan2(r[0, 2], r[2, 2])
    roll = np.arctan2(r[1, 0], r[1, 1])
    return float(np.degrees(yaw)), float(np.degrees(pitch)), float(np.degrees(roll))


def angles_to_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Inverse of rotation_to_angles (degrees in)."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


def _dist(points: np.ndarray, i: int, j: int) -> float:
    return float(np.linalg.norm(points[i] - points[j]))


def eye_distance(points: np.ndarray) -> float:
    """Outer eye corner to outer eye corner: the face's size unit."""
    return _dist(points, RIGHT_EYE_OUTER, LEFT_EYE_OUTER)


def mouth_opening(points: np.ndarray) -> float:
    """|p13 − p14| / |p33 − p263|: inner-lip gap per eye distance."""
    return _dist(points, UPPER_LIP_INNER, LOWER_LIP_INNER) / eye_distance(points)


MOUTH_CLOSED = 0.02  # inner-lip gap per eye distance that counts as a closed mouth


def close_mouth(points: np.ndarray) -> np.ndarray:
    """The same face with its mouth shut: the lower lip, chin and jaw raised by the gap.

    A neutral caught mid-word (say the first frame of a clip) would otherwise turn every
    later opening into a negative one; relative to a closed mouth, opening is opening.
    """
    unit = eye_distance(points)
    upper, lower = points[LIPS_UPPER_INNER], points[LIPS_LOWER_INNER]
    gaps = lower[:, 1] - upper[:, 1]
    if mouth_opening(points) <= MOUTH_CLOSED or gaps.max() <= 0:
        return points
    closed = points.copy()
    order = np.argsort(upper[:, 0])  # below the upper lip's line (flat beyond the corners):
    lip_line = np.interp(points[:, 0], upper[order, 0], upper[order, 1])  # a smile's upper
    below = points[:, 1] > lip_line  # lip dips below its corners and must stay put
    below[LIPS_UPPER_INNER + LIPS_UPPER_OUTER] = False
    center = lower.mean(0)
    falloff = np.clip(
        1.0 - np.linalg.norm(points[:, :2] - center[:2], axis=1) / (1.3 * unit), 0.0, 1.0
    )
    closed[below, 1] -= float(np.max(gaps)) * falloff[below]
    closed[LIPS_LOWER_INNER] = points[LIPS_UPPER_INNER]  # the inner lips meet
    return closed


def resting_mouth_gap(points: np.ndarray) -> float:
    """How far a face's mouth stands open (inner-lip gap per eye distance) beyond shut: 0 for
    closed lips, what close_mouth takes away for parted ones."""
    return mouth_opening(points) - mouth_opening(close_mouth(points))


def mouth_width(points: np.ndarray) -> float:
    """Mouth corner to mouth corner per eye distance."""
    return _dist(points, MOUTH_RIGHT, MOUTH_LEFT) / eye_distance(points)


def eye_openness_each(points: np.ndarray) -> tuple[float, float]:
    """(right, left): lid gap per eye width, |p159 − p145| / |p33 − p133| and the mirror."""
    right = _dist(points, RIGHT_UPPER_LID, RIGHT_LOWER_LID) / _dist(
        points, RIGHT_EYE_OUTER, RIGHT_EYE_INNER
    )
    left = _dist(points, LEFT_UPPER_LID, LEFT_LOWER_LID) / _dist(
        points, LEFT_EYE_INNER, LEFT_EYE_OUTER
    )
    return right, left


def eye_openness(points: np.ndarray) -> float:
    """Mean of both eyes' lid gap per eye width."""
    return float(np.mean(eye_openness_each(points)))


def gaze_each(points: np.ndarray) -> tuple[float, float]:
    """Horizontal iris position between each eye's corners (0 = image-left corner, 1 = right),
    on pose-normalised points so head turns do not read as gaze."""
    right = (points[RIGHT_IRIS, 0] - points[RIGHT_EYE_OUTER, 0]) / (
        points[RIGHT_EYE_INNER, 0] - points[RIGHT_EYE_OUTER, 0]
    )
    left = (points[LEFT_IRIS, 0] - points[LEFT_EYE_INNER, 0]) / (
        points[LEFT_EYE_OUTER, 0] - points[LEFT_EYE_INNER, 0]
    )
    return float(right), float(left)


def gaze_horizontal(points: np.ndarray) -> float:
    """Mean horizontal iris position of both eyes (see gaze_each)."""
    return float(np.mean(gaze_each(points)))


def gaze_vertical(points: np.ndarray) -> float:
    """Vertical iris position relative to the eye corners' line, per eye width (0 = level)."""
    values = []
    for iris, a, b in (
        (RIGHT_IRIS, RIGHT_EYE_OUTER, RIGHT_EYE_INNER),
        (LEFT_IRIS, LEFT_EYE_INNER, LEFT_EYE_OUTER),
    ):
        width = abs(points[b, 0] - points[a, 0]) or 1.0
        values.append((points[iris, 1] - (points[a, 1] + points[b, 1]) / 2) / width)
    return float(np.mean(values))


def absolute_angles(points: np.ndarray) -> tuple[float, float, float]:
    """Rough camera-relative (yaw, pitch, roll) in degrees from one frame alone, for picking
    a frontal neutral; not precise enough for animation (no canonical model ships)."""
    cheek = points[LEFT_CHEEK] - points[RIGHT_CHEEK]
    yaw = np.degrees(np.arctan2(-cheek[2], cheek[0]))
    chin = points[CHIN] - points[FOREHEAD]
    pitch = np.degrees(np.arctan2(chin[2], chin[1]))
    eyes = points[LEFT_EYE_OUTER] - points[RIGHT_EYE_OUTER]
    roll = np.degrees(np.arctan2(eyes[1], eyes[0]))
    return float(yaw), float(pitch), float(roll)


# ---------------------------------------------------------------- landmark topology

N_FACE = 468  # landmarks that belong to the surface mesh (468..477 are the irises)

FACE_OVAL = [
    10,
    338,
    297,
    332,
    284,
    251,
    389,
    356,
    454,
    323,
    361,
    288,
    397,
    365,
    379,
    378,
    400,
    377,
    152,
    148,
    176,
    149,
    150,
    136,
    172,
    58,
    132,
    93,
    234,
    127,
    162,
    21,
    54,
    103,
    67,
    109,
]
# Eye margins, outer corner → inner corner (upper and lower share the corners).
RIGHT_EYE_UPPER = [33, 246, 161, 160, 159, 158, 157, 173, 133]
RIGHT_EYE_LOWER = [33, 7, 163, 144, 145, 153, 154, 155, 133]
LEFT_EYE_UPPER = [263, 466, 388, 387, 386, 385, 384, 398, 362]
LEFT_EYE_LOWER = [263, 249, 390, 373, 374, 380, 381, 382, 362]
# The skin fold above each upper lid: it follows a closing lid part of the way.
RIGHT_EYE_CREASE = [130, 247, 30, 29, 27, 28, 56, 190, 243]
LEFT_EYE_CREASE = [359, 467, 260, 259, 257, 258, 286, 414, 463]
# The next ring up, under the brow: it follows a little.
RIGHT_EYE_BROW_RING = [113, 225, 224, 223, 222, 221, 189]
LEFT_EYE_BROW_RING = [342, 445, 444, 443, 442, 441, 413]
# Inner lip contour, right corner → left corner.
LIPS_UPPER_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIPS_LOWER_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
LIPS_UPPER_OUTER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LIPS_LOWER_OUTER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
