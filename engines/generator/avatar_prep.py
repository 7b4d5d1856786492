"""Avatar preparation, once per avatar image (cached by content hash): its 478 landmarks,
the person separated from the background, and a clean background plate.

Photos, paintings and many drawings work as they are: FaceMesh is retried on rescaled,
padded and contrast-enhanced variants. Where no face is found (some cartoons), a sidecar
file `IMG.landmarks.json` next to the image gives either all 478 points or 5 key points
(eye centres, nose tip, mouth corners) to which a template face is fitted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engines.errors import AvatarError
from engines.facegeom import N_LANDMARKS
from engines.generator.avatar import decode_avatar, default_avatar_path, read_avatar_file
from engines.landmarks.config import MediaPipeTrackingConfig
from engines.progress import progress

log = logging.getLogger(__name__)

PREP_VERSION = 1  # bump when what is cached changes meaning
MAX_SIDE = 1600  # larger avatars are scaled down once: the output is at most 1080p anyway
# Key points of a sidecar, in this order: the subject's right eye (on the image's left),
# left eye, nose tip, right and left mouth corners.
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left")
KEYPOINT_INDICES = (468, 473, 1, 61, 291)


@dataclass(frozen=True, slots=True)
class PreparedAvatar:
    """What the mesh generator needs from one avatar image."""

    image: np.ndarray  # BGR uint8
    points: np.ndarray  # (478, 3) float32, pixel-scaled like the tracker's landmarks
    person: np.ndarray  # (H, W) uint8 alpha: 255 = person (head, hair, body)
    plate: np.ndarray  # BGR uint8: the background with the person painted out
    found_by: str  # how the landmarks were found, for `avatar prepare`
    name: str


def cache_dir(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "talking-head-cam" / "avatars"


def sidecar_path(image_path: Path) -> Path:
    return image_path.with_name(image_path.name + ".landmarks.json")


def prepare_avatar(spec: str, cache: Path | None = None) -> PreparedAvatar:
    """`avatar.image` ('default' or a path) → PreparedAvatar, from the cache when the image
    (and its sidecar) are unchanged. Raises AvatarError naming the file and the fix."""
    path, data = read_avatar_file(spec)
    image = _limit_size(decode_avatar(data, str(path)))
    sidecar = sidecar_path(path)
    sidecar_bytes = sidecar.read_bytes() if sidecar.is_file() else b""
    digest = hashlib.sha256(
        data + b"\0" + sidecar_bytes + f"\0v{PREP_VERSION}".encode()
    ).hexdigest()[:32]
    cache = cache_dir() if cache is None else cache
    cached = _load_cached(cache / f"{digest}.npz", image, path.name)
    if cached is not None:
        return cached
    prepared = _prepare(image, path, sidecar if sidecar_bytes else None)
    _store(cache / f"{digest}.npz", prepared)
    return prepared


def _limit_size(image: np.ndarray) -> np.ndarray:
    side = max(image.shape[:2])
    if side <= MAX_SIDE:
        return image
    scale = MAX_SIDE / side
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def _prepare(image: np.ndarray, path: Path, sidecar: Path | None) -> PreparedAvatar:
    """The three steps, with progress: the landmark search retries several variants and the
    painting-out of a large image takes seconds."""
    with progress(3, f"avatar {path.name}", unit="step") as bar:
        bar.set_postfix_str("face", refresh=False)
        if sidecar is not None:
            points, found_by = load_sidecar(sidecar, image.shape)
        else:
            found = detect_avatar_landmarks(image)
            if found is None:
                raise AvatarError(
                    f"avatar.image: no face found in {path} (also tried it rescaled, padded "
                    f"and contrast-enhanced); add {sidecar_path(path).name} next to it with 5 "
                    "key points (see README: Avatars without a detectable face)"
                )
            points, found_by = found
        bar.update()
        bar.set_postfix_str("person", refresh=False)
        person = segment_person(image, points)
        bar.update()
        bar.set_postfix_str("background", refresh=False)
        plate = paint_out_person(image, person)
        bar.update()
    return PreparedAvatar(image, points.astype(np.float32), person, plate, found_by, path.name)


def _load_cached(file: Path, image: np.ndarray, name: str) -> PreparedAvatar | None:
    try:
        with np.load(file) as data:
            return PreparedAvatar(
                image, data["points"], data["person"], data["plate"], str(data["found_by"]), name
            )
    except (OSError, KeyError, ValueError):
        return None


def _store(file: Path, prepared: PreparedAvatar) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp.npz")
        np.savez_compressed(
            tmp,
            points=prepared.points,
            person=prepared.person,
            plate=prepared.plate,
            found_by=prepared.found_by,
        )
        tmp.replace(file)
    except OSError as exc:  # a read-only cache only costs time
        log.warning("cannot cache the prepared avatar in %s: %s", file.parent, exc)


# ---------------------------------------------------------------- landmarks


def _variants(image: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
    """(variant, 2x3 affine variant → original, description), most faithful first."""
    height, width = image.shape[:2]
    yield image, np.float32([[1, 0, 0], [0, 1, 0]]), "detected"
    for factor in (2.0, 3.0):
        if max(height, width) * factor <= 2400:
            big = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
            yield (
                big,
                np.float32([[1 / factor, 0, 0], [0, 1 / factor, 0]]),
                (f"detected (upscaled x{factor:g})"),
            )
    pad = max(height, width) // 3
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    yield padded, np.float32([[1, 0, -pad], [0, 1, -pad]]), "detected (padded)"
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)
    lab[:, :, 0] = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8)).apply(lab[:, :, 0])
    enhanced = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
    yield enhanced, np.float32([[1, 0, 0], [0, 1, 0]]), "detected (contrast-enhanced)"
    small = cv2.resize(enhanced, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    if min(small.shape[:2]) >= 128:
        yield small, np.float32([[2, 0, 0], [0, 2, 0]]), "detected (downscaled)"


def detect_avatar_landmarks(image: np.ndarray) -> tuple[np.ndarray, str] | None:
    """The avatar's 478 landmarks in its own pixel coordinates (z scaled like x), trying
    variants of the image until FaceMesh finds a face."""
    from engines.landmarks.mediapipe_cpu import MediaPipeLandmarks

    mesh = MediaPipeLandmarks(MediaPipeTrackingConfig(max_faces=1), static_images=True)
    try:
        for variant, back, how in _variants(image):
            found = mesh.detect(variant, 0.0, 0)
            if found is None:
                continue
            points = found.points.astype(np.float64)
            xy = points[:, :2] @ back[:, :2].T + back[:, 2]
            z = points[:, 2:] * back[0, 0]
            return np.hstack([xy, z]).astype(np.float32), how
    finally:
        mesh.close()
    return None


@functools.cache
def template_points() -> np.ndarray:
    """A real frontal face's 478 landmarks (the embedded default avatar): the template
    fitted to a sidecar's 5 key points (found once, read-only)."""
    image = decode_avatar(default_avatar_path().read_bytes(), "default")
    found = detect_avatar_landmarks(image)
    assert found is not None, "the embedded default avatar must have a face"
    found[0].setflags(write=False)
    return found[0]


def fit_template(keypoints: np.ndarray, template: np.ndarray | None = None) -> np.ndarray:
    """478 points from 5 key points: the least-squares 2D affine that takes the template's
    key points onto them, applied to the whole template (depth scaled alike)."""
    template = template_points() if template is None else template
    src = template[list(KEYPOINT_INDICES), :2].astype(np.float64)
    design = np.c_[src, np.ones(len(src))]
    solution, _, rank, _ = np.linalg.lstsq(design, keypoints.astype(np.float64), rcond=None)
    det = float(np.linalg.det(solution[:2].T)) if rank == 3 else 0.0
    if abs(det) < 1e-6:
        raise AvatarError("the 5 key points are degenerate (on one line?)")
    matrix = solution.T  # 2x3, least squares over all five points
    xy = template[:, :2] @ matrix[:, :2].T + matrix[:, 2]
    depth_scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    return np.hstack([xy, template[:, 2:] * depth_scale]).astype(np.float32)


def load_sidecar(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    """IMG.landmarks.json: {"points": [[x, y(, z)], ...]} with 478 or 5 points, or
    {"right_eye": [x, y], "left_eye": ..., "nose_tip": ..., "mouth_right": ...,
    "mouth_left": ...}; pixel coordinates of the image."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and "points" not in doc:
            points = np.array([doc[name] for name in KEYPOINT_NAMES], np.float64)
        else:
            points = np.array(doc["points"] if isinstance(doc, dict) else doc, np.float64)
    except (OSError, ValueError, KeyError, TypeError, ArithmeticError, RecursionError) as exc:
        raise AvatarError(
            f"{path}: not a landmarks file ({type(exc).__name__}: {exc}); "
            'expected {"points": [[x, y], ...]} with 478 or 5 points, or '
            f"the keys {', '.join(KEYPOINT_NAMES)}"
        ) from None
    if (
        points.ndim != 2
        or points.shape[0] not in (5, N_LANDMARKS)
        or points.shape[1] not in (2, 3)
        or not np.isfinite(points).all()
    ):
        raise AvatarError(
            f"{path}: expected 478 or 5 points of [x, y] (or [x, y, z]), "
            f"got an array of shape {points.shape}"
        )
    height, width = shape[:2]
    if (
        (points[:, 0] < 0).any()
        or (points[:, 0] >= width).any()
        or (points[:, 1] < 0).any()
        or (points[:, 1] >= height).any()
    ):
        raise AvatarError(f"{path}: points lie outside the {width}x{height} image")
    if points.shape[0] == N_LANDMARKS:
        if points.shape[1] == 2:
            points = np.hstack([points, np.zeros((N_LANDMARKS, 1))])
        return points.astype(np.float32), "sidecar (478 points)"
    try:
        return fit_template(points[:, :2]), "sidecar (5 key points, template fitted)"
    except AvatarError as exc:
        raise AvatarError(f"{path}: {exc}") from None


# ---------------------------------------------------------------- person and background


def face_hull_mask(points: np.ndarray, shape: tuple[int, ...], grow: float = 1.0) -> np.ndarray:
    """uint8 mask of the face's convex hull, grown by `grow` about its centre."""
    center = points[:, :2].mean(0)
    hull = cv2.convexHull(((points[:, :2] - center) * grow + center).astype(np.float32))
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, np.round(hull).astype(np.int32), 255, cv2.LINE_AA)
    return mask


def segment_person(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Person alpha (uint8) from MediaPipe's selfie segmentation, which ships in the same
    package; the face (grown to take in hair and ears) always counts as person, since
    paintings and drawings sometimes confuse the model."""
    import mediapipe as mp

    from engines.landmarks.mediapipe_cpu import _quiet_mediapipe

    _quiet_mediapipe()
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as model:
        result = model.process(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    soft = (
        np.clip(result.segmentation_mask, 0.0, 1.0)
        if result.segmentation_mask is not None
        else np.zeros(image.shape[:2], np.float32)
    )
    alpha = cv2.GaussianBlur((soft * 255).astype(np.uint8), (0, 0), 1.0)
    return np.maximum(alpha, face_hull_mask(points, image.shape, grow=1.15))


def paint_out_person(image: np.ndarray, person: np.ndarray) -> np.ndarray:
    """The background plate: the person region inpainted from its surroundings (at a
    reduced size: it only shows in the thin gaps a moving head uncovers)."""
    height, width = image.shape[:2]
    scale = min(1.0, 320 / max(height, width))
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    hole = cv2.resize(person, (small.shape[1], small.shape[0])) > 64
    hole = cv2.dilate(hole.astype(np.uint8) * 255, np.ones((7, 7), np.uint8))
    filled = cv2.inpaint(small, hole, 7, cv2.INPAINT_TELEA)
    filled = cv2.GaussianBlur(filled, (0, 0), 2.0)
    plate = cv2.resize(filled, (width, height), interpolation=cv2.INTER_LINEAR)
    keep = (person < 16)[:, :, None]
    return np.where(keep, image, plate)


def overlay(
    prepared: PreparedAvatar,
    triangles: np.ndarray | None = None,
    vertices: np.ndarray | None = None,
) -> np.ndarray:
    """What `avatar prepare` found, drawn on the image: person outline, mesh, landmarks."""
    out = prepared.image.copy()
    tint = np.zeros_like(out)
    tint[:, :, 1] = 255
    alpha = (255 - prepared.person).astype(np.float32)[:, :, None] / 255 * 0.45
    out = (out * (1 - alpha) + tint * alpha).astype(np.uint8)
    contours, _ = cv2.findContours(
        (prepared.person > 127).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(out, contours, -1, (0, 255, 255), 2, cv2.LINE_AA)
    if triangles is not None and vertices is not None:
        for tri in triangles:
            cv2.polylines(
                out,
                [np.round(vertices[tri, :2] * 16).astype(np.int32)],
                True,
                (255, 200, 0),
                1,
                cv2.LINE_AA,
                4,
            )
    for x, y in prepared.points[:, :2]:
        cv2.circle(out, (round(x * 16), round(y * 16)), 2 * 16, (0, 0, 255), -1, cv2.LINE_AA, 4)
    return out
